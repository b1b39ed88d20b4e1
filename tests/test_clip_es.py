"""CLIP-ES (weakseg.cams.clip_es, weakseg.methods.clip_es), the toy-CLIP captions, loss and metrics, and the
``clip pretrain`` stage, on tiny tensors and a tiny random CLIP."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from weakseg.backbones.clip import ClipVisual, load_clip, tiny_clip
from weakseg.backbones.clip_text import VOC_BACKGROUND_WORDS
from weakseg.cams.cam import make_views
from weakseg.cams.clip_es import attention_affinity, box_mask, gradcam_tokens, minmax, refine_cam, sinkhorn
from weakseg.data.captions import SYNTH_SYNONYMS, caption_match, make_captions
from weakseg.errors import ConfigError
from weakseg.eval.multilabel import average_precision, multilabel_report, roc_auc
from weakseg.losses.contrastive import multi_positive_clip_loss
from weakseg.methods import create_method
from weakseg.methods.clip_es import ClipESPredictor, ToyClipConfig, class_prompts, last_block_gradcam
from weakseg.stages.clip_pretrain import ClipPretrainConfig, clip_pretrain
from weakseg.stages.make_cams import MakeCamsConfig, make_cams
from weakseg.stages.train_cls import TrainClsConfig, load_classifier, train_cls

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------- pure CAM math


def test_gradcam_tokens_by_hand():
    acts = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [0.0, 0.0]])  # N=4 patches (2x2), D=2
    grads = torch.tensor([[[1.0, -1.0]] * 4, [[0.0, 2.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]])  # K=2
    cam = gradcam_tokens(acts, grads, (2, 2))
    # class 0: weights (1, -1): 1, -2, 0, 0 -> ReLU; class 1: weights (0, 0.5): 0, 1, 0.5, 0
    assert torch.equal(cam, torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[0.0, 1.0], [0.5, 0.0]]]))
    assert torch.equal(gradcam_tokens(acts.expand(2, -1, -1), grads, (2, 2)), cam)  # per-target activations
    with pytest.raises(ValueError, match="grads must be"):
        gradcam_tokens(acts, grads, (3, 2))


def test_sinkhorn_rows_then_columns_and_affinity_symmetric():
    a = torch.rand(6, 6) + 0.1
    t = sinkhorn(a, 1)
    assert torch.allclose(t.sum(1), torch.ones(6))  # rows last
    assert torch.allclose(sinkhorn(a, 200).sum(0), torch.ones(6), atol=1e-5)  # doubly stochastic in the limit
    manual = a / a.sum(0, keepdim=True)
    assert torch.allclose(t, manual / manual.sum(1, keepdim=True))  # columns first
    attn = torch.rand(3, 7, 7).softmax(-1)  # 3 maps, class token + 6 patches
    aff = attention_affinity(attn, iters=3, power=2)
    s = sinkhorn(attn.mean(0)[1:, 1:], 3)
    s = 0.5 * (s + s.T)
    assert aff.shape == (6, 6) and torch.allclose(aff, aff.T) and torch.allclose(aff, s @ s)


def test_box_mask_boxes_of_every_region():
    cam = torch.zeros(8, 10)
    cam[1, 1], cam[2, 3] = 1.0, 0.5  # one 8-connected region? no: (1,1) and (2,3) are two columns apart
    cam[5:7, 6:9] = 0.9
    cam[6, 6] = 0.1  # below 0.4 * max inside the second box: still covered by its box
    m = box_mask(cam, 0.4)
    expect = torch.zeros(8, 10, dtype=torch.bool)
    expect[1, 1] = expect[2, 3] = True
    expect[5:7, 6:9] = True
    assert torch.equal(m, expect)
    cam[1, 2] = 0.6  # joins the first two points: one region, one box rows 1-2, columns 1-3
    expect[1:3, 1:4] = True
    assert torch.equal(box_mask(cam, 0.4), expect)
    assert box_mask(torch.zeros(3, 3)).sum() == 0
    assert box_mask(cam, 1.0).sum() == 1  # only the maximum


def test_refinement_lowers_error_on_a_block_attention_toy():
    """12x12 grid, one object block; attention within regions (+ noise); CAM = object + noise + a blob."""
    g = torch.Generator().manual_seed(0)
    h = w = 12
    gt = torch.zeros(h, w)
    gt[3:9, 2:7] = 1
    region = gt.flatten()
    same = (region[:, None] == region[None, :]).float()
    attn = torch.zeros(1 + h * w, 1 + h * w)
    attn[1:, 1:] = same + 0.05 + 0.05 * torch.rand(h * w, h * w, generator=g)
    attn[0], attn[:, 0] = 1.0, 1.0
    attn = attn / attn.sum(-1, keepdim=True)
    cam = (gt * (0.5 + 0.5 * torch.rand(h, w, generator=g)) + 0.35 * torch.rand(h, w, generator=g)).clamp(0, 1)
    cam = minmax(cam)[None]
    mask = box_mask(cam[0], 0.4)[None]
    refined = refine_cam(cam, attention_affinity(attn[None]), mask)
    before, after = (cam[0] - gt).abs().mean(), (refined[0] - gt).abs().mean()
    assert after < 0.5 * before, (float(before), float(after))
    assert refined.shape == (1, h, w) and float(refined.min()) >= 0 and float(refined.max()) <= 1


def test_refine_mask_zeroes_sources_outside_the_boxes():
    cam = torch.tensor([[[1.0, 0.0, 0.0, 0.5]]])  # 1x4 grid
    aff = torch.ones(4, 4)
    mask = torch.tensor([[[True, True, False, False]]])
    out = refine_cam(cam, aff, mask)
    assert torch.allclose(out, torch.zeros(1, 1, 4))  # every token receives the same: only cam[0] passes
    aff = torch.eye(4)
    assert torch.allclose(refine_cam(cam, aff, mask), torch.tensor([[[1.0, 0.0, 0.0, 0.0]]]), atol=1e-4)


# ---------------------------------------------------------------------------- batched GradCAM on a tiny CLIP


@pytest.fixture(scope="module")
def visual() -> ClipVisual:
    return ClipVisual(tiny_clip(0), freeze=True)


def _per_class_gradcam(visual, tokens, text, scale, rows, target, grid):
    """The official way: one forward + backward of the last block per class."""
    block = visual.blocks[-1]
    got = []
    handle = block.ln_1.register_forward_hook(lambda _m, _i, out: got.append(out))
    with torch.enable_grad():
        x = tokens.detach().clone().requires_grad_(True)
        out = block(x)
        emb = F.normalize(visual.project(out[:, 1:].mean(1)), dim=-1)
        p = (scale * emb @ text[rows].T).softmax(-1)[0, target]
        (g,) = torch.autograd.grad(p, got[0])
    handle.remove()
    return gradcam_tokens(got[0][0, 1:].detach(), g[:, 1:], grid)[0], p.detach()


def test_batched_backward_equals_one_backward_per_class(visual):
    torch.manual_seed(0)
    x = torch.rand(1, 3, 48, 80)  # non-square: 3 x 5 tokens
    with torch.no_grad():
        tokens, grid = visual.embed(x)
        tokens, _ = visual.run_blocks(tokens, 0, visual.num_layers - 1)
    text = F.normalize(torch.randn(7, visual.embed_dim), dim=-1)  # 4 classes + 3 background rows
    classes = [0, 2, 3]
    rows = [[0, 2, 3, 4, 5, 6]] * 3
    targets = [0, 1, 2]
    scale = torch.tensor(100.0)
    cams, probs, attn = last_block_gradcam(visual, tokens, text, scale, rows, targets, grid)
    assert cams.shape == (3, 3, 5) and attn.shape == (16, 16)
    for k, c in enumerate(classes):
        ref, p = _per_class_gradcam(visual, tokens, text, scale, rows[k], targets[k], grid)
        assert torch.allclose(cams[k], ref, atol=1e-6, rtol=1e-4), c
        assert torch.allclose(probs[k], p)
    assert cams.abs().sum() > 0


def test_predictor_maps_in_unit_range_at_image_size(synth_dataset):
    method = create_method("clip-es", "tiny")
    net = method.build(None, synth_dataset.num_classes).eval()
    predictor = ClipESPredictor(net, synth_dataset, make_views((1.0, 1.5), True), method.cfg, torch.device("cpu"))
    i = next(k for k, r in enumerate(synth_dataset.records) if len(r.labels) >= 2)
    classes = list(synth_dataset[i].labels)
    cams = predictor(i, classes)
    h, w = synth_dataset.load_image(i).shape[:2]
    assert cams.shape == (len(classes), h, w) and float(cams.min()) >= 0 and float(cams.max()) <= 1
    assert predictor(i, []).shape == (0, h, w)
    rows, targets = predictor.rows_for([3, 1])
    assert rows[0][:2] == [3, 1] and targets == [0, 1] and len(rows[0]) == 2 + len(method.cfg.background)


def test_config_checks():
    with pytest.raises(ConfigError, match="rows"):
        create_method("clip-es", "tiny", ("rows=some",))
    with pytest.raises(ConfigError, match="multiple of toy.patch_size"):
        create_method("clip-es", "tiny", ("input_size=30",))


# ---------------------------------------------------------------------------- toy CLIP training pieces


def test_captions_name_a_subset_of_the_labels():
    names = ("disc", "triangle", "ring", "arrow")
    labels = np.array([[1, 0, 1, 0], [0, 0, 0, 1], [0, 0, 0, 0], [1, 1, 1, 1]], bool)
    rng = np.random.default_rng(0)
    for _ in range(20):
        caps, named = make_captions(labels, names, rng, SYNTH_SYNONYMS)
        assert not (named & ~labels).any() and named[[0, 1, 3]].any(1).all() and not named[2].any()
        assert "an arrow" in caps[1] or "a pointer" in caps[1]
        assert "nothing" in caps[2]
    caps, named = make_captions(labels, names, rng, p_all=1.0)
    assert (named == labels).all() and " and " in caps[0]
    match = caption_match(labels, named)
    assert match.diagonal().all()
    assert match[3].all() == False  # noqa: E712  (image 3 has every class but caption 2 names nothing)
    assert match[3, [0, 1, 3]].all() and not match[1, 0] and match[2, 2] and not match[0, 2]


def test_multi_positive_loss_is_clip_loss_for_one_to_one_matches():
    g = torch.Generator().manual_seed(0)
    img, txt = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    logits = 10 * F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).T
    clip = 0.5 * (F.cross_entropy(logits, torch.arange(5)) + F.cross_entropy(logits.T, torch.arange(5)))
    assert torch.allclose(multi_positive_clip_loss(img, txt, torch.eye(5, dtype=torch.bool), 10.0), clip)
    # two identical captions both matching two images: swapping them costs nothing
    match = torch.eye(5, dtype=torch.bool)
    match[0, 1] = match[1, 0] = True
    txt2 = txt.clone()
    txt2[1] = txt[0]
    a = multi_positive_clip_loss(img, txt2, match, 10.0)
    assert torch.allclose(a, multi_positive_clip_loss(img[[1, 0, 2, 3, 4]], txt2, match, 10.0))
    with pytest.raises(ValueError, match="at least one match"):
        multi_positive_clip_loss(img, txt, torch.zeros(5, 5, dtype=torch.bool), 10.0)


def test_multilabel_metrics_by_hand():
    assert average_precision([0.9, 0.8, 0.7, 0.1], [1, 0, 1, 0]) == pytest.approx((1 + 2 / 3) / 2)
    assert roc_auc([0.9, 0.8, 0.7, 0.1], [1, 0, 1, 0]) == pytest.approx(0.75)
    assert roc_auc([0.5, 0.5], [1, 0]) == 0.5 and np.isnan(roc_auc([1, 2], [1, 1]))
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.7], [0.3, 0.3, 0.3]])
    labels = np.array([[1, 0, 1], [0, 0, 1], [0, 0, 0]], bool)  # the last image has no label: left out
    r = multilabel_report(scores, labels, ["a", "b", "c"])
    assert r["images"] == 2 and r["top1_accuracy"] == 0.5 and r["topk_exact_accuracy"] == 0.5
    assert r["per_class"]["b"]["ap"] is None and r["map"] == pytest.approx(1.0)  # a: AP 1, c: AP 1


# ---------------------------------------------------------------------------- stages


@pytest.fixture(scope="module")
def pretrained(synth_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clip") / "pre"
    return clip_pretrain(ClipPretrainConfig(data=synth_root, out=out, preset="tiny", device="cpu"))


def test_clip_pretrain_writes_a_loadable_clip_and_zero_shot_metrics(pretrained):
    assert (pretrained / "DONE").is_file()
    cfg = json.loads((pretrained / "clip_config.json").read_text())
    model = load_clip(pretrained / "clip.safetensors", model_cfg=cfg)
    assert model.visual.conv1.kernel_size == (ToyClipConfig(patch_size=8).patch_size,) * 2
    zs = json.loads((pretrained / "metrics.json").read_text())["zero_shot"]
    assert zs["split"] == "val" and 0 <= zs["mean_auc"] <= 1 and 0 <= zs["map"] <= 1
    assert set(zs["per_class"]) == {"disc", "triangle", "ring", "cross", "star", "square", "ellipse", "arrow",
                                    "crescent", "hexagon"}  # fmt: skip
    with pytest.raises(ConfigError, match="leave clip_weights empty"):
        clip_pretrain(ClipPretrainConfig(data=pretrained, out=pretrained.parent / "x", set=("clip_weights=a",)))


def test_clip_es_with_given_weights_trains_nothing_and_makes_cams(pretrained, synth_root, tmp_path):
    sets = (f"clip_weights={pretrained}",)
    cls = train_cls(TrainClsConfig(data=synth_root, out=tmp_path / "cls", method="clip-es", preset="tiny", set=sets,
                                   backbone="tiny", device="cpu"))  # fmt: skip
    meta = json.loads((cls / "config.json").read_text())
    assert meta["record"]["clip"]["digest"] and meta["record"]["clip"]["weights"].endswith("clip.safetensors")
    assert (cls / "model.safetensors").stat().st_size < 1024  # the CLIP is not copied into the cls folder
    net, method, _ = load_classifier(cls)
    assert method.cfg.clip_weights == str(pretrained)
    cams = make_cams(MakeCamsConfig(cls_dir=cls, data=synth_root, out=tmp_path / "cams", scales=(1.0,), flip=False,
                                    device="cpu"))  # fmt: skip
    files = sorted(cams.glob("*.npz"))
    assert files and (cams / "DONE").is_file()
    with np.load(files[0]) as z:
        assert z["cams"].shape[0] == len(z["classes"]) and float(z["cams"].max()) <= 1


def test_missing_clip_weights_say_where_to_get_them(synth_root, tmp_path):
    cfg = TrainClsConfig(data=synth_root, out=tmp_path / "cls", method="clip-es", preset="tiny",
                         set=(f"clip_weights={tmp_path / 'ViT-B-16.pt'}",), backbone="tiny", device="cpu")  # fmt: skip
    with pytest.raises(ConfigError, match="ViT-B-16.pt.*--clip-weights|weakseg never downloads"):
        train_cls(cfg)


def test_class_prompts_synthetic_synonyms_and_clip_es_voc_phrases():
    toy = create_method("clip-es", "cpu192").cfg
    rows = class_prompts(("disc", "arrow"), toy).row_prompts()
    assert rows[0] == ["a photo of a disc.", "a photo of a disk.", "a photo of a circle."]
    assert rows[1][0] == "a photo of an arrow." and rows[2] == ["a photo of a background."]
    paper = create_method("clip-es", "paper").cfg
    prompts = class_prompts(("aeroplane", "person"), paper)
    assert prompts.row_prompts()[1] == ["a clean origami person with clothes,people,human."]
    assert prompts.background == VOC_BACKGROUND_WORDS and len(prompts.background) == 25
    bare = class_prompts(("person",), create_method("clip-es", "paper", ("synonyms=false",)).cfg)
    assert bare.row_prompts()[0] == ["a clean origami person."]
