"""The peers' protocols on scene datasets (no background class: COCO-Stuff-27,
Cityscapes-27), each against a brute-force version of the peer's own evaluation code
written here: STEGO's ``UnsupervisedMetrics`` after its ``get_transform(320, True,
"center")``, CAUSE's ``NiceTool`` after ``get_cococity_transform`` (320, 322 for DINOv2),
DiffCut's ``evaluate`` on COCO-Stuff/Cityscapes (one Hungarian per image, void dropped).
Plain loops over pixels, every permutation of a four-class toy, torchvision's own
transforms on wide (Cityscapes-like) and tall images."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms as T

from lcseg_steps.data.registry import has_background
from lcseg_steps.evaluation.protocols import ProtocolAccumulator
from lcseg_steps.evaluation.protocols_scene import (
    SceneProtocolAccumulator,
    diffcut_scene_counts,
    protocol_accumulator,
)

N = 4  # classes, none of them background
VOID = 255
NEAREST = T.InterpolationMode.NEAREST


def _scene(seed, n_pred, n_images=3):
    """Blocky ground truth with every class in every image, some void; predictions a
    noisy relabelling into ``n_pred`` ids (best matches unique, not perfect). Shapes
    alternate wide (2:1, as Cityscapes) and tall."""
    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(n_images):
        h, w = (int(rng.integers(16, 22)), int(rng.integers(36, 44)))
        if i % 2:
            h, w = w - 6, h + 3
        blocks = rng.permutation(np.resize(np.arange(N), 12)).reshape(3, 4)
        gt = blocks[np.arange(h) * 3 // h][:, np.arange(w) * 4 // w].astype(np.uint8)
        relabel = rng.permutation(max(n_pred, N))[:N] % n_pred
        pred = relabel[gt].astype(np.int64)
        noise = rng.random((h, w)) < 0.2
        pred[noise] = rng.integers(0, n_pred, size=int(noise.sum()))
        gt[rng.random((h, w)) < 0.08] = VOID
        pairs.append((gt, pred))
    return pairs


def _accumulate(pairs, n_pred, backbone="dino_vitb8", dataset="cocostuff27"):
    acc = protocol_accumulator(N, n_pred, dataset=dataset, backbone=backbone, background=False)
    for i, (g, p) in enumerate(pairs):
        acc.add(g, p, image_id=f"im{i}")
    return acc.results([f"c{i}" for i in range(N)])


def _crop(side):
    """Resize(side, NEAREST) then CenterCrop(side), on a PIL label, as both peers."""
    tf = T.Compose([T.Resize(side, interpolation=NEAREST), T.CenterCrop(side)])
    return lambda a: np.asarray(tf(Image.fromarray(a.astype(np.uint8)))).astype(np.int64)


def _unsupervised_metrics(pairs, n_pred, side):
    """STEGO's UnsupervisedMetrics (extra_clusters 0) and CAUSE's NiceTool, by loops: the
    label's void (255) becomes -1; stats[pred][label] over pixels with both in [0, N); the
    permutation cluster -> class with most pixels; IoU per class, NaN left out."""
    tf = _crop(side)
    stats = [[0] * N for _ in range(N)]
    for gt, pred in pairs:
        label = tf(gt)
        label[label == VOID] = -1
        for a, p in zip(label.ravel().tolist(), tf(pred).ravel().tolist(), strict=True):
            if 0 <= a < N and 0 <= p < N:
                stats[p][a] += 1
    best = max(
        itertools.permutations(range(N)), key=lambda m: sum(stats[k][m[k]] for k in range(N))
    )
    wins = [
        m
        for m in itertools.permutations(range(N))
        if sum(stats[k][m[k]] for k in range(N)) == sum(stats[k][best[k]] for k in range(N))
    ]
    assert len(wins) == 1, "test data must make the matching unique"
    ious, tp_sum, total = [], 0, sum(map(sum, stats))
    for c in range(N):
        k = best.index(c)  # the cluster matched to class c
        tp = stats[k][c]
        union = sum(stats[k]) + sum(stats[j][c] for j in range(N)) - tp
        ious.append(tp / union if union else math.nan)
        tp_sum += tp
    valid = [x for x in ious if not math.isnan(x)]
    return sum(valid) / len(valid), tp_sum / total, list(best)


IDS = [3, 4, 6]  # fewer, as many and more ids than classes


@pytest.mark.parametrize("n_pred", IDS)
def test_stego_equals_unsupervised_metrics_by_brute_force(n_pred):
    pairs = _scene(10 + n_pred, n_pred)
    miou, acc, mapping = _unsupervised_metrics(pairs, n_pred, 320)
    res = _accumulate(pairs, n_pred, backbone="dinov2_vitb14")  # STEGO stays at 320
    assert res["stego"]["miou"] == pytest.approx(miou, abs=1e-12)
    assert res["stego"]["pixel_accuracy"] == pytest.approx(acc, abs=1e-12)
    assert res["stego"]["mapping"] == mapping


@pytest.mark.parametrize("n_pred", IDS)
@pytest.mark.parametrize("backbone, side", [("dino_vitb8", 320), ("dinov2_vitb14", 322)])
@pytest.mark.parametrize("dataset", ["cocostuff27", "cityscapes27"])
def test_cause_equals_nicetool_by_brute_force(n_pred, backbone, side, dataset):
    pairs = _scene(20 + n_pred, n_pred)
    miou, acc, mapping = _unsupervised_metrics(pairs, n_pred, side)
    res = _accumulate(pairs, n_pred, backbone=backbone, dataset=dataset)
    assert "cause_voc" not in res
    assert res["cause_coco"]["miou"] == pytest.approx(miou, abs=1e-12)
    assert res["cause_coco"]["pixel_accuracy"] == pytest.approx(acc, abs=1e-12)
    assert res["cause_coco"]["mapping"] == mapping


def _diffcut_transform(a):
    """DiffCut's process_image on the label tensor: centre square crop of side min - 1,
    nearest-exact to 1024, then torch's default nearest to 128."""
    c = min(a.shape) - 1
    t = T.CenterCrop((c, c))(torch.from_numpy(a.astype(np.uint8))[None])
    big = T.Resize((1024, 1024), interpolation=T.InterpolationMode.NEAREST_EXACT)(t)
    return F.interpolate(big[None].float(), size=(128, 128))[0, 0].to(torch.int64).numpy()


def _diffcut_scene_brute_force(pairs):
    """DiffCut's evaluate on COCO-Stuff/Cityscapes: per image a (class, id) histogram of
    the non-void pixels with max(N, ids) columns, the injective class -> id map with most
    pixels (every one tried), FP over matched ids; counts summed over images."""
    tp, fp, fn, total = [0] * N, [0] * N, [0] * N, 0
    for gt, pred in pairs:
        label, p = _diffcut_transform(gt).ravel().tolist(), _diffcut_transform(pred).ravel()
        width = max(N, int(p.max()) + 1)
        hist = [[0] * width for _ in range(N)]
        for a, k in zip(label, p.tolist(), strict=True):
            if a != VOID:
                hist[a][k] += 1
        scored = {
            cols: sum(hist[c][cols[c]] for c in range(N))
            for cols in itertools.permutations(range(width), N)
        }
        top = max(scored.values())
        (cols,) = [m for m, v in scored.items() if v == top]
        for c in range(N):
            t = hist[c][cols[c]]
            tp[c] += t
            fn[c] += sum(hist[c]) - t
            fp[c] += sum(hist[r][cols[c]] for r in range(N)) - t
        total += sum(map(sum, hist))
    ious = [t / (t + f + n) if t + f + n else math.nan for t, f, n in zip(tp, fp, fn, strict=True)]
    valid = [x for x in ious if not math.isnan(x)]
    return sum(valid) / len(valid), sum(tp) / total


@pytest.mark.parametrize("n_pred", IDS)
def test_diffcut_scene_equals_brute_force(n_pred):
    pairs = _scene(30 + n_pred, n_pred)
    miou, acc = _diffcut_scene_brute_force(pairs)
    res = _accumulate(pairs, n_pred)
    assert res["diffcut"]["miou"] == pytest.approx(miou, abs=1e-12)
    assert res["diffcut"]["pixel_accuracy"] == pytest.approx(acc, abs=1e-12)


def test_only_diffcut_differs_from_the_background_accumulator():
    pairs = _scene(7, 5)
    scene = SceneProtocolAccumulator(N, 5, dataset="cityscapes27")
    objects = ProtocolAccumulator(N, 5, dataset="cityscapes27")
    for g, p in pairs:
        scene.add(g, p)
        objects.add(g, p)
    a, b = scene.results(), objects.results()
    assert list(a) == list(b)
    for name in a:
        if name != "diffcut":
            assert a[name] == b[name], name
    # DiffCut's VOC branch takes class 0 for background: not the same number
    assert a["diffcut"]["miou"] != b["diffcut"]["miou"]


def test_diffcut_scene_counts_one_image_by_hand():
    # class 0 on id 1 (3 px) and id 2 (1 px); class 1 on id 0 (2 px); void on id 0
    gt = np.array([[0, 0, 0, 0, 1, 1, VOID]], np.uint8)
    pred = np.array([[1, 1, 1, 2, 0, 0, 0]])
    tp, fp, fn, n = diffcut_scene_counts(gt, pred, 2)
    assert tp.tolist() == [3, 2] and fn.tolist() == [1, 0] and fp.tolist() == [0, 0] and n == 6


def test_the_registry_says_which_datasets_have_a_background():
    assert not has_background("cocostuff27") and not has_background("cityscapes27")
    assert has_background("voc12") and has_background("demo") and has_background("unknown")
    assert type(protocol_accumulator(2, 3, background=True)) is ProtocolAccumulator


@pytest.mark.parametrize(
    "dataset, want",
    [
        (
            "cocostuff27",
            {
                ("STEGO", "stego", "28.2"),
                ("PriMaPs-EM + STEGO", "stego", "29.7"),
                ("U2Seg", "stego", "30.2"),
                ("CAUSE-TR", "cause_coco", "41.9"),
                ("CAUSE-TR", "cause_coco", "45.3"),
                ("DiffCut", "diffcut", "49.1"),
            },
        ),
        (
            "cityscapes27",
            {
                ("STEGO", "stego", "21.0"),
                ("PriMaPs-EM + STEGO", "stego", "21.6"),
                ("CAUSE-TR", "cause_coco", "28.0"),
                ("CAUSE-TR", "cause_coco", "29.9"),
                ("DiffCut", "diffcut", "30.6"),
            },
        ),
    ],
)
def test_where_we_stand_shows_the_scene_datasets_published_numbers(tmp_path, dataset, want):
    import re

    from lcseg_steps.evaluation.protocols import published_results
    from lcseg_steps.stages.report import build_report

    rows = [r for r in published_results() if r["dataset"] == dataset]
    assert {(r["method"], r["protocol"], f"{r['miou']:.1f}") for r in rows} == want
    metrics = {
        "miou": 0.2,
        "pixel_accuracy": 0.5,
        "per_class_iou": {},
        "matching": "hungarian",
        "dataset": dataset,
        "weights": "timm",
        "protocols": {"stego": {"miou": 0.25}, "cause_coco": {"miou": 0.26}},
    }
    text = build_report(
        tmp_path / "r.html",
        title="t",
        metrics=metrics,
        plots=[],
        gallery=[],
        published=published_results(),
    ).read_text(encoding="utf-8")
    part = text[text.index("Where we stand") :]
    cells = [
        re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", r)
        for r in re.findall(r"<tr>(.*?)</tr>", part[: part.index("</table>")])
    ][1:]
    shown = {(c[0], c[4].removeprefix("<code>").removesuffix("</code>"), c[5]) for c in cells}
    assert shown == want
    ours = {c[4]: c[6] for c in cells}
    assert ours["<code>stego</code>"] == "25.0" and ours["<code>diffcut</code>"] == "n/a"
