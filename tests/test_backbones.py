import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from imgembed.config import BackboneCfg
from imgembed.ingest.reader import to_tensor
from imgembed.model.backbones import BackboneError, create_backbone, known_backbones
from imgembed.model.embedder import Embedder


@pytest.fixture(params=["test-tiny", "efficientnet-lite0", "clip", "torchvision"])
def backbone(request, tiny_clip, tiny_torchvision):
    spec = {"clip": tiny_clip, "torchvision": tiny_torchvision}.get(request.param, request.param)
    return create_backbone(BackboneCfg(name=spec))


def test_contract_images_to_pooled_features(backbone):
    pre = backbone.preprocess
    x = torch.randn(2, 3, pre.size, pre.size)
    with torch.inference_mode():
        y = backbone(x)
    assert y.shape == (2, backbone.dim)
    assert y.dtype == torch.float32
    assert torch.isfinite(y).all()
    assert len(backbone.fingerprint) == 16
    assert backbone.spec


def test_embedder_gives_unit_vectors(backbone):
    e = Embedder(backbone, device="cpu")
    pixels = torch.randint(0, 256, (3, 3, backbone.preprocess.size, backbone.preprocess.size), dtype=torch.uint8)
    v = e.embed(pixels)
    assert v.shape == (3, backbone.dim)
    assert abs(float((v ** 2).sum(1).mean()) - 1.0) < 1e-5


def test_default_weights_are_real_imagenet_weights():
    """A real cat photo is classified as an ImageNet cat (classes 281-285) by the model's own head."""
    from skimage import data

    bb = create_backbone(BackboneCfg())
    im = Image.fromarray(data.chelsea()).convert("RGB")
    pre = bb.preprocess
    x = to_tensor(im, pre)[None].float()
    x = (x / 255.0 - torch.tensor(pre.mean).view(1, 3, 1, 1)) / torch.tensor(pre.std).view(1, 3, 1, 1)
    with torch.inference_mode():
        probs = bb.classify(x).softmax(-1)[0]
    top = int(probs.argmax())
    assert 281 <= top <= 285, f"top class {top}"
    assert float(probs[281:286].sum()) > 0.5


def test_unknown_backbone_lists_known_ones():
    with pytest.raises(ValueError) as e:
        create_backbone(BackboneCfg(name="nosuchnet"))
    for name in ("efficientnet-lite0", "open_clip", "torchvision"):
        assert name in str(e.value)
    assert "test-tiny" not in str(e.value)  # the test backbone is not offered to users
    assert known_backbones() == ["efficientnet-lite0", "open_clip", "torchvision"]
    assert create_backbone(BackboneCfg(name="test-tiny")).dim == 32  # still there for the tests


@pytest.mark.parametrize("typo, meant", [
    ("efficientnet-lite", "efficientnet-lite0"), ("EfficientNet-Lite0", "efficientnet-lite0"),
    ("efficientnet_lite0", "efficientnet-lite0"), ("openclip:ViT-B-32:openai", "open_clip:ViT-B-32:openai"),
    ("open-clip:ViT-B-32:openai", "open_clip:ViT-B-32:openai"), ("torchvison:resnet50:DEFAULT", "torchvision:resnet50:DEFAULT"),
])
def test_a_backbone_typo_gets_a_did_you_mean(typo, meant):
    with pytest.raises(ValueError, match=f"did you mean {re.escape(meant)}\\?"):
        create_backbone(BackboneCfg(name=typo))


def test_no_suggestion_for_a_name_like_none():
    with pytest.raises(ValueError) as e:
        create_backbone(BackboneCfg(name="xyzzy"))
    assert "did you mean" not in str(e.value) and "efficientnet-lite0 (the default" in str(e.value)


def test_open_clip_without_weights_refuses_random_init():
    with pytest.raises(BackboneError, match="random weights"):
        create_backbone(BackboneCfg(name="open_clip:ViT-B-32"))


def test_open_clip_missing_file_says_how_to_supply(tmp_path):
    with pytest.raises(BackboneError, match="not found"):
        create_backbone(BackboneCfg(name=f"open_clip:ViT-B-32:{tmp_path}/missing.safetensors"))


def test_open_clip_unavailable_tag_says_how_to_supply(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("IMGEMBED_CACHE_DIR", str(tmp_path))
    with pytest.raises(BackboneError) as e:
        create_backbone(BackboneCfg(name="open_clip:ViT-B-32:laion2b_s34b_b79k"))
    assert "local checkpoint file" in str(e.value)


def test_open_clip_loads_local_weights_exactly(tiny_clip):
    import open_clip

    path = tiny_clip.rsplit(":", 1)[1]
    ref = open_clip.create_model("imgembed-test-vit")
    ref.load_state_dict(torch.load(path, weights_only=True))
    bb = create_backbone(BackboneCfg(name=tiny_clip))
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(bb(x), ref.encode_image(x), atol=1e-6)
    assert bb.has_text and bb.encode_text(["a photo of a hat"]).shape == (1, bb.dim)


def test_torchvision_without_weights_refuses(tiny_torchvision):
    with pytest.raises(BackboneError, match="random weights"):
        create_backbone(BackboneCfg(name="torchvision:resnet18"))
    bb = create_backbone(BackboneCfg(name=tiny_torchvision))
    assert bb.dim == 512


def test_text_on_image_only_backbone_explains():
    bb = create_backbone(BackboneCfg(name="test-tiny"))
    assert not bb.has_text
    with pytest.raises(BackboneError, match="no text encoder"):
        bb.encode_text(["hat"])


def test_efficientnet_lite0_is_timms_network_output_for_output():
    """The network written out in imgembed is timm's efficientnet_lite0: same tensors, same outputs."""
    import timm

    from imgembed.model.backbones.efficientnet import Lite0Net

    torch.manual_seed(0)
    ref = timm.create_model("efficientnet_lite0", pretrained=False).eval()
    with torch.no_grad():  # BN statistics away from 0/1, so that a misplaced norm would show
        for name, t in ref.state_dict().items():
            if "running" in name or name.endswith((".weight", ".bias")) and t.dim() == 1:
                t.copy_(torch.rand_like(t) + 0.5)
    ours = Lite0Net().eval()
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == \
        [(k, v.shape) for k, v in ref.state_dict().items()]
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        assert torch.allclose(ours.forward_features(x), ref.forward_features(x), rtol=1e-5, atol=1e-5)
        assert torch.allclose(ours(x), ref(x), rtol=1e-5, atol=1e-5)


def test_building_the_default_backbone_imports_no_timm():
    import subprocess
    import sys

    code = ("import sys; from imgembed.config import BackboneCfg; from imgembed.model.backbones import create_backbone; "
            "create_backbone(BackboneCfg()); print(sorted(m for m in ('timm', 'torchvision') if m in sys.modules))")
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.strip() == "[]"
