"""The shared CLIP core (weakseg.backbones.clip / clip_text) on tiny random open_clip models."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

open_clip = pytest.importorskip("open_clip")

from weakseg.backbones.clip import (  # noqa: E402
    ClipVisual,
    TinyClipConfig,
    clip_fingerprint,
    load_clip,
    resample_pos_embed,
    tiny_clip,
    tokens_to_map,
)
from weakseg.backbones.clip_text import (  # noqa: E402
    COCO_BACKGROUND_WORDS,
    VOC_BACKGROUND_WORDS,
    PromptSet,
    TextEmbeddingCache,
    prompt_preset,
    text_embeddings,
)
from weakseg.errors import ConfigError  # noqa: E402


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return tiny_clip(seed=0)


@pytest.fixture()
def visual(model: nn.Module) -> ClipVisual:
    return ClipVisual(copy.deepcopy(model))


def _images(b: int, h: int, w: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------------------------
# ClipVisual


@pytest.mark.parametrize("size", [(64, 96), (96, 48), (32, 16)])
def test_non_square_tokens_attention_and_embeddings(visual: ClipVisual, size: tuple[int, int]) -> None:
    h, w = size[0] // 16, size[1] // 16
    x = _images(2, *size)
    out = visual.forward_tokens(x, attn=True)
    assert out.grid == (h, w) and out.layers == (0, 1, 2, 3) and out.attn_layers == (0, 1, 2, 3)
    assert all(t.shape == (2, 1 + h * w, 128) for t in out.tokens)
    assert all(a.shape == (2, 1 + h * w, 1 + h * w) for a in out.attn)
    for a in out.attn:  # rows are softmax distributions
        torch.testing.assert_close(a.sum(-1), torch.ones(2, 1 + h * w))
    assert out.token_map(-1).shape == (2, 128, h, w)
    # the map is the row-major patch grid: token 1 + r*w + c sits at (r, c)
    torch.testing.assert_close(out.token_map(3)[:, :, h - 1, 0], out.tokens[3][:, 1 + (h - 1) * w])
    emb = visual.image_embedding(x)
    patches, grid = visual.patch_embeddings(x)
    assert emb.shape == (2, 64) and patches.shape == (2, h * w, 64) and grid == (h, w)
    torch.testing.assert_close(patches, visual.project(out.tokens[-1])[:, 1:])


def test_forward_tokens_selects_layers_and_stops_early(visual: ClipVisual) -> None:
    x = _images(1, 48, 80)
    full = visual.forward_tokens(x)
    some = visual.forward_tokens(x, layers=[1, -4], attn=[2])
    assert some.layers == (0, 1) and some.attn_layers == (2,) and len(some.attn) == 1
    torch.testing.assert_close(some.tokens[1], full.tokens[1])
    only = visual.forward_tokens(x, layers=1, attn=True)
    assert only.attn_layers == (0, 1)  # blocks 2, 3 never run
    with pytest.raises(ValueError, match="out of range"):
        visual.forward_tokens(x, layers=[4])


def test_native_size_matches_open_clip(model: nn.Module, visual: ClipVisual) -> None:
    x = _images(2, 64, 64)
    xn = (x - visual.mean) / visual.std
    ref = model.visual(xn)
    torch.testing.assert_close(visual(x), ref, atol=1e-5, rtol=1e-5)
    vis = copy.deepcopy(model.visual)
    vis.output_tokens = True
    _, ref_tokens = vis(xn)  # ln_post of the patch tokens, not projected
    patches, _ = visual.patch_embeddings(x)
    torch.testing.assert_close(patches, ref_tokens @ vis.proj, atol=1e-5, rtol=1e-5)


def test_pos_embed_native_grid_is_the_parameter_and_cache_follows_weights(visual: ClipVisual) -> None:
    pe = visual.visual.positional_embedding
    assert visual.native_grid == (4, 4)
    assert visual.pos_embed((4, 4)) is pe
    assert torch.equal(resample_pos_embed(pe.detach(), (4, 4), (4, 4)), pe.detach())
    big = visual.pos_embed((6, 3))
    assert big.shape == (1 + 18, 128) and visual.pos_embed((6, 3)) is big  # cached
    assert torch.equal(big[0], pe[0])  # the class token is not resampled
    # a constant grid resamples to the same constant (bicubic weights sum to 1)
    const = torch.cat([torch.zeros(1, 2), torch.ones(16, 2) * 3.0])
    torch.testing.assert_close(
        resample_pos_embed(const, (4, 4), (7, 5)), torch.cat([const[:1], torch.full((35, 2), 3.0)])
    )
    with torch.no_grad():
        pe.add_(1.0)
    assert not torch.equal(visual.pos_embed((6, 3)), big)  # stale entry recomputed after an in-place edit
    with pytest.raises(ConfigError, match="multiple of the patch size 16"):
        visual.forward_tokens(_images(1, 64, 72))


def test_attention_maps_equal_multihead_attention_need_weights(visual: ClipVisual) -> None:
    x = _images(2, 48, 80)
    out = visual.forward_tokens(x, attn=True)
    block_in = visual.embed(x)[0]
    for i, block in enumerate(visual.blocks):
        y = block.ln_1(block_in)
        _, ref = block.attn(y, y, y, need_weights=True, average_attn_weights=True)
        assert ref.shape == out.attn[i].shape
        torch.testing.assert_close(out.attn[i], ref, atol=1e-5, rtol=0)
        # and the hand-computed block output equals open_clip's own block
        torch.testing.assert_close(out.tokens[i], block(block_in), atol=1e-5, rtol=1e-5)
        block_in = out.tokens[i]


def test_layer_scale_blocks(model: nn.Module) -> None:
    cfg = TinyClipConfig(vision_layers=2).model_cfg()
    cfg["vision_cfg"]["ls_init_value"] = 0.3
    visual = ClipVisual(tiny_clip(0, cfg))
    assert not isinstance(visual.blocks[0].ls_1, nn.Identity)
    x = _images(1, 32, 48)
    out = visual.forward_tokens(x, attn=True)
    block_in = visual.embed(x)[0]
    for i, block in enumerate(visual.blocks):
        torch.testing.assert_close(out.tokens[i], block(block_in), atol=1e-5, rtol=1e-5)
        block_in = out.tokens[i]


def test_sequence_first_blocks_give_the_same_tokens(model: nn.Module) -> None:
    seq_model = copy.deepcopy(model)
    seq_model.visual.transformer.batch_first = False
    for block in seq_model.visual.transformer.resblocks:
        block.attn.batch_first = False
    x = _images(2, 32, 48)
    a = ClipVisual(copy.deepcopy(model)).forward_tokens(x)
    b = ClipVisual(seq_model).forward_tokens(x)
    for ta, tb in zip(a.tokens, b.tokens, strict=True):
        torch.testing.assert_close(ta, tb, atol=1e-5, rtol=1e-5)


def test_frozen_weights_unchanged_by_training_a_head(visual: ClipVisual) -> None:
    before = {k: v.clone() for k, v in visual.visual.state_dict().items()}
    head = nn.Linear(64, 3)
    head_before = head.weight.detach().clone()
    opt = torch.optim.SGD([*head.parameters(), *(p for p in visual.parameters() if p.requires_grad)], lr=1.0)
    visual.train()
    assert not visual.visual.training  # a frozen tower stays in eval mode
    for step in range(3):
        patches, _ = visual.patch_embeddings(_images(2, 32, 48, seed=step))
        loss = F.cross_entropy(head(patches.mean(1)), torch.tensor([0, 2]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(not p.requires_grad and p.grad is None for p in visual.parameters())
    for k, v in visual.visual.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not torch.equal(head.weight, head_before)


def test_last_block_split_gives_input_gradients_only(visual: ClipVisual) -> None:
    """CLIP-ES: blocks 0..L-2 without a graph, the last block with one; the gradient reaches the tokens."""
    x = _images(1, 32, 64)
    with torch.no_grad():
        pre = visual.forward_tokens(x, layers=-2)
    tokens = pre.tokens[0].detach().requires_grad_()
    acts = []
    hook = visual.blocks[-1].ln_1.register_forward_hook(lambda m, i, o: acts.append(o))
    out, maps = visual.run_blocks(tokens, start=visual.num_layers - 1, attn=True)
    hook.remove()
    assert len(maps) == 1 and len(acts) == 1
    torch.testing.assert_close(out, visual.forward_tokens(x, layers=-1).tokens[0], atol=1e-5, rtol=1e-5)
    visual.project(out[:, 1:]).mean(1).sum().backward()
    assert tokens.grad is not None and tokens.grad.abs().sum() > 0
    assert all(p.grad is None for p in visual.parameters())


def test_tokens_to_map_rejects_wrong_grid() -> None:
    t = torch.arange(2 * 7 * 3, dtype=torch.float32).reshape(2, 7, 3)
    assert tokens_to_map(t, (2, 3)).shape == (2, 3, 2, 3)
    with pytest.raises(ValueError, match="3x3"):
        tokens_to_map(t, (3, 3))


# ---------------------------------------------------------------------------------------------------------------
# Text classifier


def test_text_embeddings_shape_norm_and_mean_of_prompts(model: nn.Module) -> None:
    prompts = PromptSet.build(
        {"cat": ["cat", "kitty"], "dog": "dog"}, templates=["a photo of a {}.", "a {}."], background=["sky", "grass"]
    )
    emb = text_embeddings(model, prompts)
    assert emb.shape == (4, 64) and emb.dtype == torch.float32
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(4))
    assert prompts.names == ("cat", "dog", "sky", "grass") and prompts.num_classes == 2
    texts = ["a photo of a cat.", "a cat.", "a photo of a kitty.", "a kitty."]
    with torch.no_grad():
        each = F.normalize(model.encode_text(open_clip.tokenize(texts)), dim=-1)
    torch.testing.assert_close(emb[0], F.normalize(each.mean(0), dim=0), atol=1e-6, rtol=1e-5)
    with torch.no_grad():
        sky = F.normalize(model.encode_text(open_clip.tokenize(["a photo of a sky.", "a sky."])), dim=-1)
    torch.testing.assert_close(emb[2], F.normalize(sky.mean(0), dim=0), atol=1e-6, rtol=1e-5)


def test_clip_es_presets(model: nn.Module) -> None:
    voc = prompt_preset("clip_es_voc")
    assert voc.num_classes == 20 and len(voc.background) == 25 and voc.background == VOC_BACKGROUND_WORDS
    assert dict(voc.classes)["person"] == ("person with clothes,people,human",)
    assert voc.row_prompts()[voc.names.index("person")] == ["a clean origami person with clothes,people,human."]
    coco = prompt_preset("clip_es_coco")
    assert coco.num_classes == 80 and len(COCO_BACKGROUND_WORDS) == 23 and "keyboard" not in coco.background
    assert text_embeddings(model, voc).shape == (45, 64)
    with pytest.raises(ConfigError, match="clip_es_voc"):
        prompt_preset("voc")
    with pytest.raises(ConfigError, match="exactly one"):
        PromptSet.build(["cat"], templates="a photo")
    with pytest.raises(ConfigError, match="distinct"):
        PromptSet.build(["sky"], background=["sky"])


def test_text_cache_memory_and_folder(model: nn.Module, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    import weakseg.backbones.clip_text as ct

    prompts = PromptSet.build(["cat", "dog"], templates=["a {}."], background=["sky"])
    cache = TextEmbeddingCache(tmp_path / "run")
    first = text_embeddings(model, prompts, cache=cache)
    files = list((tmp_path / "run").glob("text_*.safetensors"))
    assert len(files) == 1 and not list((tmp_path / "run").glob(".*tmp"))
    calls = []
    real = ct._encode
    monkeypatch.setattr(ct, "_encode", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert torch.equal(text_embeddings(model, prompts, cache=cache), first)  # memory
    assert torch.equal(text_embeddings(model, prompts, cache=TextEmbeddingCache(tmp_path / "run")), first)  # file
    assert calls == []
    text_embeddings(model, PromptSet.build(["cat", "dog"], templates=["a photo of {}."]), cache=cache)
    assert calls == [1]  # other templates: another key
    other = copy.deepcopy(model)
    key = TextEmbeddingCache.key(other, prompts)
    assert key == TextEmbeddingCache.key(model, prompts)
    with torch.no_grad():
        other.visual.proj.add_(1.0)  # the image tower does not change text embeddings
    assert TextEmbeddingCache.key(other, prompts) == key
    with torch.no_grad():
        other.text_projection.mul_(2.0)
    assert TextEmbeddingCache.key(other, prompts) != key
    assert clip_fingerprint(other) != clip_fingerprint(model)


# ---------------------------------------------------------------------------------------------------------------
# Loading by path


def _same_outputs(a: nn.Module, b: nn.Module) -> None:
    x = _images(1, 32, 48)
    torch.testing.assert_close(ClipVisual(a, freeze=False)(x), ClipVisual(b, freeze=False)(x), atol=0, rtol=0)
    tokens = open_clip.tokenize(["a clean origami cat."])
    with torch.no_grad():
        torch.testing.assert_close(a.encode_text(tokens), b.encode_text(tokens), atol=0, rtol=0)
    assert torch.equal(a.logit_scale, b.logit_scale)


def test_load_state_dict_files_roundtrip(model: nn.Module, tmp_path) -> None:
    from safetensors.torch import save_file

    sd = model.state_dict()
    torch.save(sd, tmp_path / "tiny.pt")
    _same_outputs(model, load_clip(tmp_path / "tiny.pt", "weakseg-tiny"))
    _same_outputs(model, load_clip(tmp_path / "tiny.pt"))  # OpenAI layout, sizes read off the shapes
    _same_outputs(model, load_clip(tmp_path / "tiny.pt", model_cfg=TinyClipConfig()))
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "tiny.safetensors"))
    _same_outputs(model, load_clip(tmp_path / "tiny.safetensors", "weakseg-tiny"))
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "ckpt.pt")
    _same_outputs(model, load_clip(tmp_path / "ckpt.pt", "weakseg-tiny"))
    loaded = load_clip(tmp_path / "tiny.pt")
    assert not loaded.training and all(p.dtype == torch.float32 for p in loaded.parameters())


def test_load_with_open_clip_model_name(model: nn.Module, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    import open_clip.factory

    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, "weakseg-test-vit", TinyClipConfig().model_cfg())
    torch.save(model.state_dict(), tmp_path / "open_clip_pytorch_model.bin")
    _same_outputs(model, load_clip(tmp_path / "open_clip_pytorch_model.bin", "weakseg-test-vit"))
    monkeypatch.setitem(
        open_clip.factory._MODEL_CONFIGS, "weakseg-test-vit3", TinyClipConfig(vision_layers=3).model_cfg()
    )
    with pytest.raises(ConfigError, match="does not fit the CLIP architecture 'weakseg-test-vit3'.*unexpected"):
        load_clip(tmp_path / "open_clip_pytorch_model.bin", "weakseg-test-vit3")
    with pytest.raises(ConfigError, match="unknown open_clip model 'no-such-clip'.*ViT-B-16"):
        load_clip(tmp_path / "open_clip_pytorch_model.bin", "no-such-clip")


def test_load_torchscript_archive(model: nn.Module, tmp_path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, but OpenAI's file is TorchScript
        try:
            scripted = torch.jit.script(copy.deepcopy(model))
        except Exception as e:  # pragma: no cover - depends on the open_clip/torch versions
            pytest.skip(f"open_clip's CLIP cannot be scripted here: {e}")
        torch.jit.save(scripted, str(tmp_path / "ViT-tiny.pt"))
        loaded = load_clip(tmp_path / "ViT-tiny.pt")
    _same_outputs(model, loaded)


def test_missing_or_bad_files_give_config_errors(tmp_path) -> None:
    missing = tmp_path / "weights" / "ViT-B-16.pt"
    with pytest.raises(ConfigError, match=r"not found: .*ViT-B-16\.pt.*download ViT-B-16\.pt.*--clip-weights"):
        load_clip(missing)
    with pytest.raises(ConfigError, match="open_clip checkpoint of 'ViT-B-16'"):
        load_clip(tmp_path / "model.safetensors", "ViT-B-16")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="not a readable CLIP checkpoint"):
        load_clip(tmp_path / "junk.pt")
    torch.save({"visual.layer1.0.conv1.weight": torch.zeros(1)}, tmp_path / "rn.pt")
    with pytest.raises(ConfigError, match="ResNet CLIP"):
        load_clip(tmp_path / "rn.pt")


def test_tiny_clip_is_seeded_and_leaves_global_rng() -> None:
    state = torch.random.get_rng_state()
    a, b, c = tiny_clip(3), tiny_clip(3), tiny_clip(4)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a.visual.proj, b.visual.proj) and not torch.equal(a.visual.proj, c.visual.proj)
    small = tiny_clip(0, TinyClipConfig(vision_layers=2, image_size=32))
    assert ClipVisual(small).num_layers == 2 and ClipVisual(small).native_grid == (2, 2)
