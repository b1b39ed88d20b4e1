"""FTMU: matching, reward, A2C, template-update mechanics on a toy video, crops, data, stages (tiny)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from weakseg.data.davis import DavisDataset, list_sequences, load_clip, open_sequence
from weakseg.data.synthetic_video import OCCLUDER, TARGET, SynthVideoConfig, make_video, write_davis
from weakseg.errors import ConfigError, DataError
from weakseg.methods.ftmu import (
    KEEP,
    MODES,
    PRESETS,
    UPDATE,
    ActorCritic,
    MaskRCNNProposer,
    Tracker,
    agent_optimizers,
    build_proposer,
    crop_frames,
    paste_masks,
    train_agent_episode,
)
from weakseg.pipeline import RunConfig, run
from weakseg.refine.tracking import (
    a2c_losses,
    box_iou,
    candidate_boxes,
    discounted_returns,
    fill_box,
    iou_reward,
    mask_box,
    mask_iou,
    mask_nms,
    match_by_appearance,
    match_by_iou,
    search_region,
)
from weakseg.stages.track import (
    TrackConfig,
    TrackOptions,
    TrainAgentConfig,
    TrainAgentOptions,
    TrainProposerConfig,
    TrainProposerOptions,
    track,
    train_agent,
    train_proposer,
)

# ---------------------------------------------------------------------------- pure pieces


def test_discounted_returns_hand_checked():
    r = discounted_returns([1.0, 2.0, 3.0], 0.99)
    # R2 = 3; R1 = 2 + .99*3 = 4.97; R0 = 1 + .99*4.97 = 5.9203
    assert torch.allclose(r, torch.tensor([5.9203, 4.97, 3.0]), atol=1e-5)
    assert discounted_returns([], 0.9).numel() == 0


def test_a2c_policy_gradient_sign_and_critic():
    log_probs = torch.tensor([-0.5, -0.7], requires_grad=True)
    values = torch.tensor([1.0, 3.0], requires_grad=True)
    returns = torch.tensor([2.0, 1.0])  # advantages +1 and -2
    out = a2c_losses(log_probs, values, returns)
    assert out["actor"].item() == pytest.approx(-(-0.5 * 1 + -0.7 * -2) / 2)
    assert out["critic"].item() == pytest.approx((1 + 4) / 2)
    out["actor"].backward()
    # descending the actor loss raises the log-probability of the better-than-expected action, lowers the other
    assert log_probs.grad[0] < 0 < log_probs.grad[1]
    assert values.grad is None  # the advantage is detached for the actor


def test_iou_reward_is_100_iou_cubed():
    gt = np.zeros((4, 4), bool)
    gt[:, :2] = True  # 8 px
    pred = np.zeros((4, 4), bool)
    pred[:, 1:3] = True  # overlap 4, union 12: IoU 1/3
    assert iou_reward(pred, gt) == pytest.approx(100 / 27)
    assert iou_reward(gt, gt) == pytest.approx(100.0)
    empty = np.zeros((4, 4), bool)
    assert iou_reward(empty, empty) == pytest.approx(100.0)  # object absent and none predicted: IoU := 1
    assert iou_reward(pred, empty) == 0.0


def test_box_and_mask_iou_by_hand():
    assert box_iou(np.array([[0, 0, 2, 2]]), np.array([[1, 1, 3, 3], [5, 5, 6, 6]])).tolist() == [[1 / 7, 0.0]]
    m = np.zeros((2, 3, 3), bool)
    m[0, 0, :2] = True
    m[1, 0, 1:] = True
    assert mask_iou(m[:1], m[1:])[0, 0] == pytest.approx(1 / 3)
    assert mask_box(m[0]).tolist() == [0, 0, 2, 1]
    assert mask_box(np.zeros((3, 3), bool)) is None
    assert fill_box(np.array([1, 0, 3, 2]), (3, 4)).sum() == 4


def test_search_region_union_enlarge_clip():
    r = search_region([np.array([10, 10, 20, 30]), np.array([30, 20, 40, 40])], 0.1, (45, 100))
    # union (10, 10, 40, 40): 30 x 30, +3 px per side; the bottom is cut at the frame height 45
    assert r.tolist() == [7, 7, 43, 43]
    r = search_region([np.array([0, 0, 10, 10])], 0.5, (12, 12))
    assert r.tolist() == [0, 0, 12, 12]


def test_candidate_boxes_start_with_the_template_and_stay_in_the_region():
    t = np.array([10, 10, 20, 20], np.float32)
    region = np.array([6, 6, 24, 24], np.float32)
    boxes = candidate_boxes(t, region, (-0.3, 0.0, 0.3), (0.75, 1.33))
    assert boxes.shape == (9 + 2, 4)
    assert boxes[0].tolist() == t.tolist()
    assert (boxes[:, :2] >= region[:2] - 1e-4).all() and (boxes[:, 2:] <= region[2:] + 1e-4).all()


def test_match_by_iou_picks_the_overlapping_candidate_ties_and_none():
    tpl = np.zeros((6, 6), bool)
    tpl[1:4, 1:4] = True
    far = np.zeros((6, 6), bool)
    far[4:, 4:] = True
    near = np.zeros((6, 6), bool)
    near[2:5, 2:5] = True
    i, iou = match_by_iou(tpl, np.stack([far, near, far]))
    assert i == 1 and iou == pytest.approx(4 / 14)
    assert match_by_iou(tpl, np.stack([far, far]))[0] == 0  # tie (IoU 0): the first (best-scored) candidate
    assert match_by_iou(tpl, np.zeros((0, 6, 6), bool)) == (-1, 0.0)  # no candidate: no abort


def test_match_by_appearance_cosine():
    tpl = torch.tensor([1.0, 0.0])
    i, s = match_by_appearance(tpl, torch.tensor([[0.0, 1.0], [2.0, 0.1], [-1.0, 0.0]]))
    assert i == 1 and s > 0.99
    assert match_by_appearance(tpl, torch.zeros(0, 2)) == (-1, 0.0)


def test_mask_nms_drops_duplicates_and_empties():
    a = np.zeros((3, 5, 5), bool)
    a[0, :3, :3] = True
    a[1, :3, :3] = True
    a[1, 0, 3] = True  # near-duplicate of 0
    b = np.concatenate([a, np.zeros((1, 5, 5), bool)])
    b[2, 4, 4] = True
    keep = mask_nms(b, np.array([0.5, 0.9, 0.1, 0.99]), 0.7, 5)
    assert keep == [1, 2]  # 3 is empty, 0 duplicates 1 (lower score)


def test_crop_and_paste_round_trip():
    frame = torch.zeros(3, 40, 50)
    frame[:, 10:20, 15:30] = 1.0
    win = np.array([[10.0, 5.0, 35.0, 25.0]])
    crop = crop_frames(frame, win, 32)
    back = paste_masks(crop[:, 0], win, (40, 50))[0] > 0.5
    truth = np.zeros((40, 50), bool)
    truth[10:20, 15:30] = True
    assert mask_iou(back.numpy()[None], truth[None])[0, 0] > 0.9
    assert not back[:, :10].any() and not back[:, 36:].any()  # outside the window stays empty


# ---------------------------------------------------------------------------- toy video: update mechanics


def _toy_video(T: int = 8, size: int = 40):
    """A 6x6 square moving right 3 px per frame; from frame 3 a look-alike parked where the target started."""
    frames = np.zeros((T, size, size, 3), np.uint8)
    gt = np.zeros((T, size, size), bool)
    dis = np.zeros((T, size, size), bool)
    for t in range(T):
        gt[t, 10:16, 2 + 3 * t : 8 + 3 * t] = True
        if t >= 3:
            dis[t, 10:16, 2:8] = True
    return frames, gt, dis


class StubTracker(Tracker):
    """The tracker with its proposer replaced by the truth: candidates = [distractor (first), target]."""

    def __init__(self, gt, dis, agent=None, cfg=PRESETS["tiny"]):
        self.gt, self.dis, self.t = gt, dis, 0
        self.cfg, self.device, self.agent, self.maskrcnn = cfg, torch.device("cpu"), agent, None
        self.dim = 4

    def segment(self, frame, boxes):
        m = torch.from_numpy(self.gt[0]).float()[None]
        return m, torch.ones(1), torch.ones(1, self.dim), torch.zeros(1, 3, 8, 8)

    def embed(self, masked):
        return torch.ones(len(masked), self.dim)

    def candidates(self, frame, template):
        self.t += 1
        masks = [m for m in (self.dis[self.t], self.gt[self.t]) if m.any()]
        n = len(masks)
        return {"masks": np.stack(masks), "scores": torch.ones(n), "phi": torch.ones(n, self.dim),
                "masked": torch.zeros(n, 3, 8, 8)}  # fmt: skip


def _fixed_agent(action: int, dim: int = 4) -> ActorCritic:
    agent = ActorCritic(2 * dim + 3, 8)
    with torch.no_grad():
        last = agent.actor[-1]
        last.weight.zero_()
        last.bias.copy_(torch.tensor([5.0, -5.0]) if action == UPDATE else torch.tensor([-5.0, 5.0]))
    return agent


def test_template_drifts_without_update_and_follows_with_it():
    frames, gt, dis = _toy_video()
    stale = StubTracker(gt, dis).run(frames, mask_box(gt[0]), "no-update", gt=gt)
    fresh = StubTracker(gt, dis).run(frames, mask_box(gt[0]), "always-update", gt=gt)
    # frames 1-2: only the target (IoU 1/3, then 0 with the frame-0 template); from frame 3 the look-alike sits
    # exactly on the frame-0 template
    assert stale.actions == [KEEP] * 7 and fresh.actions == [UPDATE] * 7
    assert (stale.masks[3:] == dis[3:]).all()  # no update: IoU matching locks onto the look-alike
    assert (fresh.masks == gt).all()  # update every frame: the template follows the target
    assert fresh.rewards == [100.0] * 7
    assert stale.rewards == [100.0] * 2 + [0.0] * 5  # reward = 100·IoU³ of the prediction vs the truth


def test_agent_actions_drive_the_template():
    frames, gt, dis = _toy_video()
    cfg = PRESETS["tiny"]
    iou_only = dataclasses.replace(cfg, appearance_after=0)
    upd = StubTracker(gt, dis, _fixed_agent(UPDATE), iou_only).run(frames, mask_box(gt[0]), "agent", gt=gt)
    keep = StubTracker(gt, dis, _fixed_agent(KEEP), iou_only).run(frames, mask_box(gt[0]), "agent", gt=gt)
    assert upd.actions == [UPDATE] * 7 and (upd.masks == gt).all()
    assert keep.actions == [KEEP] * 7 and (keep.masks[3:] == dis[3:]).all()
    # after `appearance_after` keeps the tracker switches to appearance matching
    app = dataclasses.replace(cfg, appearance_after=2)
    res = StubTracker(gt, dis, _fixed_agent(KEEP), app).run(frames, mask_box(gt[0]), "agent", gt=gt)
    assert res.matching[:2] == ["iou", "iou"] and set(res.matching[2:]) == {"appearance"}


def test_a2c_learns_to_update_on_the_toy_video():
    """With the template-IoU in the state, A2C must learn that updating pays (rewards come later)."""
    torch.manual_seed(0)
    frames, gt, dis = _toy_video(T=10, size=48)
    cfg = dataclasses.replace(PRESETS["tiny"], appearance_after=0, lr_actor=3e-2, lr_critic=3e-2, entropy=0.0)
    agent = ActorCritic(2 * 4 + 3, 16)
    opts = agent_optimizers(agent, cfg)
    rates = [train_agent_episode(StubTracker(gt, dis, agent, cfg), opts, frames, gt, mask_box(gt[0]))["update_rate"]
             for _ in range(60)]  # fmt: skip
    assert np.mean(rates[-10:]) > 0.9 > np.mean(rates[:5])


# ---------------------------------------------------------------------------- the real tracker, tiny


def test_tracker_runs_every_mode_with_a_tiny_proposer():
    torch.manual_seed(0)
    cfg = PRESETS["tiny"]
    v = make_video(SynthVideoConfig(frames=4, height=48, width=64), 3)
    net = build_proposer(cfg)
    agent = ActorCritic(2 * net.out_channels + 3, cfg.hidden)
    tracker = Tracker(net, cfg, torch.device("cpu"), agent)
    for mode in MODES:
        res = tracker.run(v.frames, mask_box(v.target[0]), mode)
        assert res.masks.shape == (4, 48, 64) and res.seconds > 0
    with pytest.raises(ConfigError, match="valid names"):
        tracker.run(v.frames, mask_box(v.target[0]), "bogus")


def test_maskrcnn_proposer_needs_its_weights_file(tmp_path):
    with pytest.raises(ConfigError, match="weights file .* not found"):
        MaskRCNNProposer(tmp_path / "missing.pth", torch.device("cpu"))


# ---------------------------------------------------------------------------- data


def test_synthetic_videos_are_deterministic_and_labelled():
    cfg = SynthVideoConfig(frames=6, height=48, width=64, occluder=1.0, distractor=1.0)
    a, b = make_video(cfg, 7), make_video(cfg, 7)
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.masks, b.masks)
    assert not np.array_equal(a.frames, make_video(cfg, 8).frames)
    assert a.target[0].any() and (a.masks == OCCLUDER).any()
    assert set(np.unique(a.masks)) <= {0, 1, 2, 3}


def test_davis_reader_round_trip_and_2016_binary_masks(tmp_path):
    v = make_video(SynthVideoConfig(frames=5, height=48, width=64, distractor=0.0, occluder=0.0), 1, name="toy")
    write_davis(v, tmp_path)
    assert list_sequences(tmp_path) == ["toy"]
    clip = load_clip(open_sequence(tmp_path, "toy"), width=32, step=2)
    assert clip.frames.shape == (3, 24, 32, 3) and clip.frame_ids == (0, 2, 4)
    assert clip.objects == (TARGET,)
    full = load_clip(open_sequence(tmp_path, "toy"))
    assert full.first_box(TARGET).tolist() == mask_box(v.target[0]).tolist()
    ds = DavisDataset(tmp_path)
    assert len(ds) == 5 and ds[3].sequence == "toy" and ds[3].frame == 3
    assert ds[0].boxes[0].as_tuple() == tuple(int(x) for x in mask_box(v.target[0]))
    # DAVIS 2016: 0 / 255 masks -> one object (255 is the object, not void)
    from PIL import Image

    ann = tmp_path / "Annotations" / "480p" / "toy"
    for p in sorted(ann.glob("*.png")):
        Image.fromarray(((np.asarray(Image.open(p)) == TARGET) * 255).astype(np.uint8)).save(p)
    clip = load_clip(open_sequence(tmp_path, "toy"))
    assert clip.objects == (1,) and np.array_equal(clip.masks == 1, v.target)
    assert DavisDataset(tmp_path).load_mask(0).max() == 1  # read again: the files changed
    with pytest.raises(DataError, match="not a DAVIS folder"):
        list_sequences(tmp_path / "nothing")
    with pytest.raises(ConfigError, match="toy"):
        open_sequence(tmp_path, "missing")


# ---------------------------------------------------------------------------- stages (tiny)


def test_stages_train_and_track_end_to_end(tmp_path):
    davis = tmp_path / "davis"
    for s in (11, 12):
        write_davis(make_video(SynthVideoConfig(frames=4, height=48, width=64), s, name=f"v{s}"), davis)
    common = {"device": "cpu"}
    prop = train_proposer(TrainProposerConfig(out=tmp_path / "p", preset="tiny", synth_videos=2, **common))
    agent = train_agent(TrainAgentConfig(out=tmp_path / "a", proposer_dir=prop, data=davis, synth_videos=1,
                                         davis_sequences=("v11",), width=64, **common))  # fmt: skip
    res = track(TrackConfig(out=tmp_path / "t", data=davis, proposer_dir=prop, agent_dir=agent, width=64, **common))
    assert res["sequences"] == ["v12"]  # the agent's training sequence is left out by default
    assert set(res["modes"]) == set(MODES)
    for m in res["modes"].values():
        assert 0 <= m["j"] <= 1 and 0 <= m["f"] <= 1 and m["fps"] > 0 and m["proposer_forwards_per_frame"] > 0
    assert 0 <= res["oracle_box"]["j"] <= 1 and len(res["oracle_box"]["per_sequence"]) == 1
    saved = json.loads((tmp_path / "t" / "metrics.json").read_text())
    assert saved["modes"]["agent"]["jf"] == pytest.approx(res["modes"]["agent"]["jf"])
    assert len(list(Path(tmp_path / "t" / "masks" / "agent" / "v12").glob("*.png"))) == 4
    assert (tmp_path / "t" / "DONE").exists()


def test_weakseg_run_task_video(tmp_path):
    davis = tmp_path / "davis"
    for s in (21, 22):
        write_davis(make_video(SynthVideoConfig(frames=4, height=48, width=64), s, name=f"v{s}"), davis)
    cfg = RunConfig(out=tmp_path / "run", data=davis, task="video", method="ftmu", device="cpu",
                    proposer=TrainProposerOptions(preset="tiny", synth_videos=1),
                    agent=TrainAgentOptions(synth_videos=1, davis_sequences=("v21",), width=64),
                    track=TrackOptions(width=64, modes=("propagate", "agent")))  # fmt: skip
    summary = run(cfg)
    assert summary["video"]["sequences"] == ["v22"]
    assert set(summary["video"]) == {"sequences", "propagate", "agent"}
    with pytest.raises(ConfigError, match="does not run task"):
        run(dataclasses.replace(cfg, method="mcis"))


def test_more_proposer_steps_extend_a_finished_run(tmp_path):
    cfg = TrainProposerConfig(out=tmp_path / "p", preset="tiny", synth_videos=1, device="cpu")
    train_proposer(cfg)
    first = json.loads((tmp_path / "p" / "metrics.json").read_text())["steps"]
    train_proposer(dataclasses.replace(cfg, set=("proposer_steps=8",)))  # resumes, not refused
    assert json.loads((tmp_path / "p" / "metrics.json").read_text())["steps"] > first
    with pytest.raises(ConfigError, match="crop_size"):
        train_proposer(dataclasses.replace(cfg, set=("crop_size=40",)))  # another network: refused
