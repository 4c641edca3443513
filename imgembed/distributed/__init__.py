"""Scale-out: the indexing pipeline as a Ray Data job that writes embedding shards.

``imgembed.distributed.ray_job.embed_to_shards`` plans the job (listing, shards to do) and runs it;
``imgembed.distributed.stages`` holds the per-batch work the cluster runs (decode, embed);
``imgembed.distributed.shards`` owns the shard format and builds an index from the shards. Ray is an optional
extra (``pip install 'imgembed[ray]'``); nothing here is imported by the local path.
"""
