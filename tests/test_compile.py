"""torch.compile in the embedder: the auto rule, real compiled vectors, and the fall-back."""

import logging
import pickle

import numpy as np
import pytest
import torch
from helpers import TINY

from imgembed.cli import build_parser
from imgembed.config import BackboneCfg
from imgembed.model import embedder as embedder_mod
from imgembed.model.backbones import create_backbone
from imgembed.model.embedder import AUTO_COMPILE_MIN_IMAGES, Embedder, compile_mode, worth_compiling


def pixels(n: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def test_cnns_and_vits_are_told_apart(tiny_clip, tiny_torchvision):
    assert create_backbone(BackboneCfg(name=TINY)).convolutional
    assert create_backbone(BackboneCfg(name=tiny_torchvision)).convolutional  # a resnet
    assert not create_backbone(BackboneCfg(name=tiny_clip)).convolutional  # a ViT
    # CLIP's RN50-style image tower is a CNN (its attention pool included), whatever its text tower
    from open_clip.modified_resnet import ModifiedResNet

    from imgembed.model.backbones import mostly_convolutional
    assert mostly_convolutional(ModifiedResNet(layers=(2, 2, 2, 2), output_dim=32, heads=2, image_size=64, width=16))


def test_auto_rule(tiny_clip):
    cnn, vit = create_backbone(BackboneCfg(name=TINY)), create_backbone(BackboneCfg(name=tiny_clip))
    cpu = torch.device("cpu")
    assert worth_compiling(cpu, cnn, AUTO_COMPILE_MIN_IMAGES)
    assert not worth_compiling(cpu, cnn, AUTO_COMPILE_MIN_IMAGES - 1)  # the compile would not pay
    assert not worth_compiling(torch.device("cuda"), cnn, 10**6)  # decode-bound there
    assert not worth_compiling(cpu, vit, 10**6)  # no faster on a CPU
    assert compile_mode(True) == "on" and compile_mode(False) == "off" and compile_mode("auto") == "auto"
    with pytest.raises(ValueError, match="auto, on, off"):
        compile_mode("yes")


def test_plan_compiles_only_when_auto_says_so(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "compile", lambda m, **kw: calls.append(m) or m.forward)
    e = Embedder.from_cfg(BackboneCfg(name=TINY, device="cpu", compile="auto"))
    assert not e.plan(10) and not e.compiled
    assert e.plan(AUTO_COMPILE_MIN_IMAGES) and e.compiled and len(calls) == 1
    off = Embedder.from_cfg(BackboneCfg(name=TINY, device="cpu", compile="off"))
    assert not off.plan(10**6) and not calls[1:]


@pytest.mark.slow
def test_compiled_vectors_equal_eager_ones_including_a_short_last_batch():
    eager = Embedder.from_cfg(BackboneCfg(name=TINY, device="cpu", compile="off"))
    comp = Embedder.from_cfg(BackboneCfg(name=TINY, device="cpu", compile="on"))
    assert comp.compiled
    x = pixels(11)
    ref = eager.embed(x)
    got = np.concatenate([comp.embed(x[:8]), comp.embed(x[8:])])  # 3 < 8: padded, not recompiled
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert comp.compiled


def test_a_failing_compiler_falls_back_to_eager(monkeypatch, caplog):
    def broken(*a, **kw):
        raise RuntimeError("InductorError: no working C++ compiler found")

    monkeypatch.setattr(torch, "compile", lambda m, **kw: broken)
    e = Embedder.from_cfg(BackboneCfg(name=TINY, device="cpu", compile="on"))
    ref = Embedder.from_cfg(BackboneCfg(name=TINY, device="cpu", compile="off")).embed(pixels(5))
    with caplog.at_level(logging.WARNING, logger=embedder_mod.__name__):
        got = e.embed(pixels(5))
    np.testing.assert_allclose(got, ref, atol=1e-6)
    assert not e.compiled and "torch.compile failed" in caplog.text and "--compile off" in caplog.text
    assert e.plan(10**6) is False  # auto never tries again either


def test_a_compiled_embedder_pickles_and_compiles_again(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda m, **kw: m.forward)
    e = Embedder.from_cfg(BackboneCfg(name=TINY, device="cpu", compile="on"))
    e.embed(pixels(4))
    copy = pickle.loads(pickle.dumps(e))
    assert copy.compiled and copy.compile_mode == "on"
    np.testing.assert_allclose(copy.embed(pixels(4)), e.embed(pixels(4)), atol=1e-6)


def test_cli_compile_flag():
    p = build_parser()
    assert p.parse_args(["index", "f"]).compile == "auto"
    assert p.parse_args(["index", "f", "--compile"]).compile == "on"
    assert p.parse_args(["eval", "--gallery", "g", "--queries", "q", "--compile", "off"]).compile == "off"
