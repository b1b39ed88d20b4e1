"""CAM and MCIS networks: shapes, batching equivalence, losses, parameter groups, inference."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from weakseg.backbones import create_backbone
from weakseg.cams.cam import make_views
from weakseg.cams.coattention import co_attention
from weakseg.config import config_from_dict
from weakseg.engine.artifacts import jsonable
from weakseg.errors import ConfigError
from weakseg.methods import METHODS, create_method, get_method_class
from weakseg.methods.cam import PRESETS as CAM_PRESETS
from weakseg.methods.cam import CamConfig, CamNet
from weakseg.methods.mcis import PRESETS, MCISConfig, MCISNet, mcis_loss
from weakseg.tasks import methods_of

K = 5
HP = dataclasses.replace(PRESETS["tiny"], input_size=32)


pytestmark = pytest.mark.usefixtures("one_thread")


def _net(cls=MCISNet, hp=HP, stride=8) -> CamNet:
    torch.manual_seed(0)
    return cls(create_backbone("tiny", output_stride=stride), K, hp).eval()


class _Counter:
    """Records the batch shape of every backbone call."""

    def __init__(self, net):
        self.calls: list[tuple[int, ...]] = []
        net.backbone.register_forward_hook(lambda m, i, o: self.calls.append(tuple(i[0].shape)))


def test_registry_and_presets():
    # the methods of the image-level-label task (other tasks, and tests, register methods of their own)
    assert {"cam", "mcis"} <= set(methods_of("tags"))
    assert all(METHODS[n].task == "tags" and METHODS[n].name == n for n in ("cam", "mcis"))
    assert get_method_class("cam").Config is CamConfig and get_method_class("mcis").Config is MCISConfig
    with pytest.raises(ConfigError, match="cam, .*mcis"):
        get_method_class("grad-cam")
    with pytest.raises(ConfigError, match="cpu"):
        create_method("mcis", "gpu")
    paper = PRESETS["paper"]
    assert (paper.epochs, paper.batch_size, paper.input_size, paper.output_stride) == (15, 5, 256, 8)
    assert (paper.lr, paper.momentum, paper.weight_decay, paper.lr_milestones) == (1e-3, 0.9, 5e-4, (5, 10))
    assert paper.lr_mult == (1, 2, 10, 20) and paper.contrastive_from_epoch == 2
    # test-time pairing: the paper's 3 partners + self-pairs; off on CPU; 1 partner in the tests' preset
    assert {n: (p.test_partners, p.test_self_pairs) for n, p in PRESETS.items()} == {
        "paper": (3, True), "cpu": (0, False), "cpu192": (0, False), "tiny": (1, True),
    }  # fmt: skip
    for cls, presets in ((CamConfig, CAM_PRESETS), (MCISConfig, PRESETS)):
        assert set(presets) == {"paper", "cpu", "cpu192", "tiny"}
        for hp in presets.values():
            assert type(hp) is cls and config_from_dict(cls, json.loads(json.dumps(jsonable(hp)))) == hp
    # the MCIS presets extend the CAM presets of the same name (every CamConfig field equal)
    for name, hp in PRESETS.items():
        cam_fields = {f.name: getattr(hp, f.name) for f in dataclasses.fields(CamConfig)}
        assert CamConfig(**cam_fields) == CAM_PRESETS[name]
    # run/demo's preset: the cpu preset at input 192, no self-pair copy, 2 frozen stages, nothing else changed
    assert PRESETS["cpu192"] == dataclasses.replace(PRESETS["cpu"], input_size=192, self_pairs=(), frozen_stages=2)
    assert CAM_PRESETS["cpu192"] == dataclasses.replace(CAM_PRESETS["cpu"], input_size=192, frozen_stages=2)
    # create_method: the preset with key=value overrides applied (nested fields by dotted keys)
    m = create_method("mcis", "tiny", ("epochs=3", "lr_milestones=[1, 2]", "web.threshold=0.3", "self_pairs=[]"))
    assert m.cfg == dataclasses.replace(
        PRESETS["tiny"], epochs=3, lr_milestones=(1, 2), self_pairs=(),
        web=dataclasses.replace(PRESETS["tiny"].web, threshold=0.3),
    )  # fmt: skip
    with pytest.raises(ConfigError, match="no option 'epoch'"):
        create_method("cam", "tiny", ("epoch=3",))
    with pytest.raises(ConfigError, match="input_size"):
        create_method("cam", "tiny", ("input_size=8",))  # the config's check() runs


def test_cam_logits_are_gap_of_maps():
    net = _net(CamNet)
    x = torch.rand(2, 3, 32, 32)
    f = net.features(x)
    torch.testing.assert_close(net(x)["logits"], net.cam_maps(f).mean((2, 3)), atol=1e-5, rtol=1e-5)


def test_parameter_groups_and_frozen_bn():
    net = _net()
    groups = net.parameter_groups(HP)
    assert [g["lr"] for g in groups] == [HP.lr * m for m in HP.lr_mult]
    ids = [{id(p) for p in g["params"]} for g in groups]
    backbone = {id(p) for p in net.backbone.parameters()}
    assert ids[0] | ids[1] == backbone
    assert {id(net.coatt.weight), id(net.co_classifier.weight), id(net.gate.weight)} <= ids[2]
    assert id(net.classifier.bias) in ids[3]
    assert sum(len(i) for i in ids) == len(list(net.parameters()))
    net.train()
    bns = [m for m in net.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns) and net.head.training
    net2 = MCISNet(create_backbone("tiny"), K, dataclasses.replace(HP, freeze_bn=False)).train()
    assert all(m.training for m in net2.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_mcis_forward_computes_each_image_once_and_matches_unbatched():
    net = _net()
    count = _Counter(net)
    b = 2
    a, p = torch.rand(b, 3, 32, 32), torch.rand(b, 3, 32, 32)
    views = [a.flip(-1), torch.rand(b, 3, 24, 24), torch.rand(b, 3, 64, 64)]
    with torch.no_grad():
        out = net(a, p, views, contrastive=True)
    # three sizes → three backbone calls; every image exactly once
    assert sorted(count.calls) == sorted([(3 * b, 3, 32, 32), (b, 3, 24, 24), (b, 3, 64, 64)])
    # reference: each pair computed on its own
    with torch.no_grad():
        fa, fp = net.features(a), net.features(p)
        w = net.coatt.weight
        m_co, n_co = co_attention(fa, fp, w)
        co = lambda f: net.co_classifier(f).mean((2, 3))  # noqa: E731
        torch.testing.assert_close(out["logits"], net.cam_maps(fa).mean((2, 3)), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(out["co_a"], co(m_co), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(out["co_p"], co(n_co), atol=1e-5, rtol=1e-4)
        g = torch.sigmoid(net.gate(m_co))
        torch.testing.assert_close(out["contrast_a"], co(fa * (1 - g)), atol=1e-5, rtol=1e-4)
        for v, (co_av, co_v) in zip(views, out["co_self"], strict=True):
            m2, n2 = co_attention(fa, net.features(v), w)
            torch.testing.assert_close(co_av, co(m2), atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(co_v, co(n2), atol=1e-5, rtol=1e-4)
    assert len(out["logits_v"]) == 3 and "contrast_a" in out


def _out(b=2):
    g = torch.Generator().manual_seed(0)
    r = lambda: torch.randn(b, K, generator=g)  # noqa: E731
    return {
        "logits": r(), "logits_p": r(), "logits_v": [r()], "co_a": r(), "co_p": r(), "co_self": [(r(), r())],
        "contrast_a": r(), "contrast_p": r(),
    }  # fmt: skip


def test_mcis_loss_terms():
    mlsm = torch.nn.functional.multilabel_soft_margin_loss
    out = _out()
    ya = torch.tensor([[1.0, 1, 0, 0, 0], [0, 1, 0, 0, 0]])
    yp = torch.tensor([[1.0, 0, 1, 0, 0], [0, 1, 0, 0, 0]])
    batch = {"label_a": ya, "label_p": yp}
    hp = dataclasses.replace(HP, contrastive_from_epoch=2)
    early = mcis_loss(out, batch, 1, hp)
    assert "contrast" not in early
    shared = torch.tensor([[1.0, 0, 0, 0, 0], [0, 1, 0, 0, 0]])
    plain = mlsm(torch.cat([out["logits"], out["logits_p"]]), torch.cat([ya, yp]))
    co = mlsm(torch.cat([out["co_a"], out["co_p"]]), torch.cat([shared, shared]))
    self_ = mlsm(torch.cat([out["logits"], out["logits_v"][0]]), torch.cat([ya, ya])) + mlsm(
        torch.cat(out["co_self"][0]), torch.cat([ya, ya])
    )
    torch.testing.assert_close(early["loss"], plain + co + self_)
    late = mcis_loss(out, batch, 2, hp)
    # contrastive: only row 0 has unshared classes (a: class 1, p: class 2); row 1 shares everything
    contrast = mlsm(out["contrast_a"][:1], torch.tensor([[0.0, 1, 0, 0, 0]])) + mlsm(
        out["contrast_p"][:1], torch.tensor([[0.0, 0, 1, 0, 0]])
    )
    torch.testing.assert_close(late["contrast"], contrast)
    torch.testing.assert_close(late["loss"], plain + co + self_ + contrast)


def test_mcis_step_trains():
    net = _net().train()
    hp = dataclasses.replace(HP, contrastive_from_epoch=0, lr=0.1)
    opt = torch.optim.SGD(net.parameter_groups(hp), lr=hp.lr, momentum=0.9)
    torch.manual_seed(1)
    batch = {
        "anchor": torch.rand(4, 3, 32, 32),
        "partner": torch.rand(4, 3, 32, 32),
        "label_a": torch.tensor([[1.0, 0, 0, 0, 0], [0, 1, 1, 0, 0], [0, 0, 0, 1, 0], [1, 0, 0, 0, 1]]),
        "label_p": torch.tensor([[1.0, 1, 0, 0, 0], [0, 1, 0, 0, 0], [0, 0, 0, 1, 1], [1, 0, 0, 0, 0]]),
    }
    batch["views"] = [batch["anchor"].flip(-1)]
    losses = []
    for _ in range(20):
        out = METHODS["mcis"](hp).step(net, batch, 0)
        opt.zero_grad()
        out["loss"].backward()
        assert net.gate.weight.grad is not None and net.coatt.weight.grad.abs().sum() > 0
        opt.step()
        losses.append(out["loss"].item())
    assert losses[-1] < 0.85 * losses[0]


def test_predict_cams_flip_equivariant_and_normalised():
    """With both flips among the views, CAMs of a mirrored image are the mirrored CAMs."""
    net = _net(CamNet)
    with torch.no_grad():  # make some class maps positive
        net.classifier.bias.fill_(0.5)
    img = torch.rand(1, 3, 40, 56)
    views = make_views((1.0, 0.5), flip=True)
    cams = net.predict_cams(img, [1, 3], views, 32, (40, 56))
    cams_f = net.predict_cams(img.flip(-1), [1, 3], views, 32, (40, 56))
    assert cams.shape == (2, 40, 56)
    assert cams.min() >= 0 and torch.allclose(cams.flatten(1).amax(1), torch.ones(2), atol=1e-3)
    torch.testing.assert_close(cams_f, cams.flip(-1), atol=1e-4, rtol=1e-4)


def test_mcis_predict_forwards_each_partner_once_per_scale():
    net = _net()
    with torch.no_grad():
        net.co_classifier.weight.abs_()
    count = _Counter(net)
    img = torch.rand(1, 3, 40, 48)
    partners = [torch.rand(1, 3, 36, 44), torch.rand(1, 3, 50, 30)]
    rows = {0: [0, 0, 1], 2: [1, 1, 1]}  # partner 1 serves two classes, partner 0 is drawn twice
    views = make_views((1.0, 0.5), flip=True)
    cams = net.predict_cams(img, [0, 2], views, 32, (40, 48), partners=partners, partner_rows=rows)
    assert cams.shape == (2, 40, 48) and 0 <= cams.min() and cams.max() <= 1
    assert sorted(count.calls) == [(6, 3, 16, 16), (6, 3, 32, 32)]  # (anchor + 2 partners) × 2 flips per scale


def test_mcis_partner_cams_use_each_class_channel():
    net = _net()
    with torch.no_grad():
        net.classifier.weight.zero_()
        net.classifier.bias.fill_(-1.0)  # plain CAMs nowhere positive
        w = net.co_classifier.weight.abs()
        w[2] = -w[2]  # head features are ≥ 0, so class 2's co-attention map is ≤ 0 everywhere
        net.co_classifier.weight.copy_(w)
    img, partners = torch.rand(1, 3, 32, 32), [torch.rand(1, 3, 32, 32)]
    views = make_views((1.0,), flip=False)
    cams = net.predict_cams(img, [0, 2], views, 32, (32, 32), partners=partners, partner_rows={0: [0], 2: [0]})
    assert cams[0].max() > 0.99 and cams[1].max() == 0


def test_frozen_stages_get_no_gradient_and_keep_their_weights():
    hp = dataclasses.replace(HP, frozen_stages=2)
    torch.manual_seed(0)
    net = CamNet(create_backbone("efficientnet-lite0", output_stride=16, pretrained=False), K, hp).train()
    eff = net.backbone.net
    frozen = [*eff.conv_stem.parameters(), *eff.bn1.parameters(), *eff.blocks[:2].parameters()]
    before = [p.detach().clone() for p in frozen]
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    net(torch.rand(2, 3, 32, 32))["logits"].sum().backward()
    opt.step()
    assert all(p.grad is None for p in frozen)
    assert all(p.grad is not None for p in eff.blocks[2].parameters())  # the next stage still learns
    assert all(torch.equal(a, p) for a, p in zip(before, frozen, strict=True))
    with pytest.raises(ConfigError, match="frozen_stages"):  # the tiny test backbone has no stages to freeze
        CamNet(create_backbone("tiny"), K, hp)
    with pytest.raises(ConfigError, match="frozen_stages"):
        dataclasses.replace(HP, frozen_stages=-1).check()


def test_train_cls_contract_lets_more_epochs_extend_and_refuses_other_hparams(tmp_path):
    """train-cls calls begin_stage with may_change=("method_config.epochs",): the rule checked on its record."""
    from weakseg.engine.artifacts import is_done, load_json, mark_done, save_json
    from weakseg.engine.stage import begin_stage

    may = ("method_config.epochs",)
    record = {"method": "mcis", "backbone": "tiny", "class_names": ["a"], "method_config": HP}
    assert begin_stage(tmp_path, "train-cls", record, may_change=may) == "run"
    mark_done(tmp_path)
    assert begin_stage(tmp_path, "train-cls", record, may_change=may) == "complete"
    more = {**record, "method_config": dataclasses.replace(HP, epochs=9)}
    assert begin_stage(tmp_path, "train-cls", more, may_change=may) == "run"  # more epochs may continue the run
    assert not is_done(tmp_path) and load_json(tmp_path / "config.json")["record"]["method_config"]["epochs"] == 9
    save_json(tmp_path / "state" / "train_state.json", {"epoch": 1})
    other = {**more, "method_config": dataclasses.replace(HP, epochs=9, lr=0.5)}
    with pytest.raises(ConfigError, match=r"differs in: method_config\.lr\)"):
        begin_stage(tmp_path, "train-cls", other, may_change=may)
    with pytest.raises(ConfigError, match=r"differs in: backbone\)"):
        begin_stage(tmp_path, "train-cls", {**more, "backbone": "efficientnet-lite0"}, may_change=may)
    assert (tmp_path / "state" / "train_state.json").is_file()  # refused: nothing deleted
    assert begin_stage(tmp_path, "train-cls", other, may_change=may, overwrite=True) == "run"
    assert not (tmp_path / "state").exists()  # rebuilt from scratch
    assert load_json(tmp_path / "config.json")["record"]["method_config"]["lr"] == 0.5
