"""Without network, a backbone whose weights are not on the machine fails at once with one error;
names that are almost right get a did-you-mean; a query that is no file suggests --text."""

from __future__ import annotations

import json
import logging
import socket

import pytest
from helpers import TINY, write_photos

from imgembed.cli import main
from imgembed.config import BackboneCfg
from imgembed.model.backbones import BackboneError, create_backbone

CLIP_TAG = "open_clip:ViT-B-32:laion2b_s34b_b79k"


@pytest.fixture
def connections(monkeypatch):
    """Every outgoing connection attempt, each refused as on a machine without network."""
    tried = []

    def refuse(address, *a, **kw):
        tried.append(address)
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", lambda self, address: refuse(address))
    return tried


def test_offline_mode_fails_without_trying_the_network(connections, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("IMGEMBED_CACHE_DIR", str(tmp_path))  # an empty cache: the weights are not here
    with caplog.at_level(logging.INFO), pytest.raises(BackboneError) as e:
        create_backbone(BackboneCfg(name=CLIP_TAG))
    assert connections == []  # HF_HUB_OFFLINE=1 (conftest): not one attempt
    msg = str(e.value)
    assert msg.startswith(f"the weights of {CLIP_TAG} are not on this machine and cannot be downloaded now "
                          "(HF_HUB_OFFLINE is set)")
    assert "local checkpoint file" in msg and "laion2b_s34b_b79k" in msg
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # said once, by the error


def test_no_network_is_one_short_attempt_and_no_retries(connections, tmp_path, monkeypatch, caplog):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("IMGEMBED_CACHE_DIR", str(tmp_path))
    with caplog.at_level(logging.INFO), pytest.raises(BackboneError, match="cannot be reached: Network is unreachable"):
        create_backbone(BackboneCfg(name=CLIP_TAG))
    assert len(connections) == 1 and connections[0][1] == 443  # the probe; the Hub client never ran
    assert constants.HF_HUB_OFFLINE is False  # offline mode was only lent for the load
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.records


def test_text_search_on_a_clip_index_without_its_weights_is_one_line(photos, tmp_path, tiny_clip, connections,
                                                                     capsys, caplog):
    ix = tmp_path / "ix"
    assert main(["index", str(photos), "--index", str(ix), "--backbone", tiny_clip, "--workers", "0"]) == 0
    manifest = json.loads((ix / "manifest.json").read_text())
    manifest["backbone"] = CLIP_TAG  # as if built on a machine with network, with the Hub's weights
    (ix / "manifest.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    with caplog.at_level(logging.INFO):
        assert main(["search", "a red dress", "--text", "--index", str(ix)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: the weights of {CLIP_TAG} are not on this machine")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING] and connections == []


@pytest.mark.parametrize("spec, hint", [
    ("open_clip:ViT-B-23:openai", "did you mean open_clip:ViT-B-32:openai?"),
    ("open_clip:vit-b-32:openai", "did you mean open_clip:ViT-B-32:openai?"),
    ("open_clip:ViT-B-32:laion2b_s34b_b97k", "did you mean open_clip:ViT-B-32:laion2b_s34b_b79k?"),
])
def test_open_clip_typos_get_a_did_you_mean(spec, hint, connections):
    with pytest.raises(ValueError) as e:
        create_backbone(BackboneCfg(name=spec))
    assert hint in str(e.value) and connections == []


def test_a_backbone_typo_is_named_before_any_work(tmp_path, capsys):
    folder = tmp_path / "photos"
    write_photos(folder, 2)
    assert main(["index", str(folder), "--index", str(tmp_path / "ix"), "--backbone", "efficientnet-lite"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: unknown backbone 'efficientnet-lite'; did you mean efficientnet-lite0?")
    assert "test-tiny" not in err and not (tmp_path / "ix").exists()


def test_a_query_that_is_no_file_suggests_text(photos, tmp_path, capsys):
    ix = tmp_path / "ix"
    assert main(["index", str(photos), "--index", str(ix), "--backbone", TINY, "--workers", "0"]) == 0
    capsys.readouterr()
    assert main(["search", "a red dress", "--index", str(ix)]) == 1
    err = capsys.readouterr().err
    assert err == ("error: a red dress: no such file; to search by a description, add --text (it needs an index "
                   "built with a CLIP backbone, open_clip:...)\n")
