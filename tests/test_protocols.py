"""Tests of lcseg_steps.evaluation.protocols: each peer's protocol against a brute-force
implementation of the peer's rule (plain loops over pixels, every permutation, exact fractions),
the peers' label transforms against torchvision's own, and the issue's two hand-worked
confusions."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms as T

from lcseg_steps.evaluation.matching import (
    hungarian_match,
    iou_hungarian_match,
    iou_majority_match,
    majority_match,
)
from lcseg_steps.evaluation.protocols import (
    PROTOCOLS,
    ProtocolAccumulator,
    cause_protocol,
    diffcut_image_counts,
    dsm_scores,
    protocol_metrics,
    published_results,
    resample,
    resize_nearest,
)
from lcseg_steps.evaluation.scoring import scores

N_GT = 4  # background 0 and three classes
VOID = 255


def _images(seed, n_pred, n_images=4):
    """Near-square blocky gt with every class in every image (some void), predictions a
    noisy relabelling into ``n_pred`` ids, so best matches are unique but not perfect."""
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(n_images):
        h = int(rng.integers(20, 30))
        w = h + int(rng.integers(0, 3))
        coarse = rng.permutation(np.resize(np.arange(N_GT), 12)).reshape(3, 4)
        gt = coarse[np.arange(h) * 3 // h][:, np.arange(w) * 4 // w].astype(np.uint8)
        relabel = rng.permutation(max(n_pred, N_GT))[:N_GT] % n_pred
        pred = relabel[gt]
        noise = rng.random((h, w)) < 0.25
        pred[noise] = rng.integers(0, n_pred, size=int(noise.sum()))
        gt[rng.random((h, w)) < 0.08] = VOID
        pairs.append((gt, pred))
    return pairs


def _accumulate(pairs, n_pred, dataset="demo", backbone="dino_vits16", n_gt=N_GT):
    acc = ProtocolAccumulator(n_gt, n_pred, dataset=dataset, backbone=backbone)
    for i, (g, p) in enumerate(pairs):
        acc.add(g, p, image_id=f"im{i}")
    return acc.results()


def _pixel_confusion(pairs, n_pred):
    """(N_GT, n_pred) counts by a loop over pixels, void skipped."""
    conf = [[0] * n_pred for _ in range(N_GT)]
    for gt, pred in pairs:
        for g, p in zip(gt.ravel().tolist(), pred.ravel().tolist(), strict=True):
            if g != VOID:
                conf[g][p] += 1
    return conf


def _iou(conf, g, k):
    inter = conf[g][k]
    union = sum(conf[g]) + sum(row[k] for row in conf) - inter
    return Fraction(inter, union) if union else Fraction(0)


def _remapped_scores(conf, mapping, absent_zero):
    """Per-class IoU and pixel accuracy from counts sent through ``mapping`` (id -> class,
    -1 unmatched: wrong for its class, a false positive for none), exact fractions."""
    n_gt = len(conf)
    tp = [0] * n_gt
    pred_total = [0] * n_gt
    for k, g_to in enumerate(mapping):
        for g in range(n_gt):
            if g_to >= 0:
                pred_total[g_to] += conf[g][k]
                if g == g_to:
                    tp[g] += conf[g][k]
    ious = []
    for g in range(n_gt):
        union = sum(conf[g]) + pred_total[g] - tp[g]
        ious.append(Fraction(tp[g], union) if union else (0.0 if absent_zero else math.nan))
    total = sum(map(sum, conf))
    return [float(x) for x in ious], Fraction(sum(tp), total)


def _check(result, ious, acc, absent_zero=False):
    np.testing.assert_allclose(result["per_class_iou"], ious, rtol=0, atol=1e-12, equal_nan=True)
    want = np.mean(ious) if absent_zero else np.nanmean(ious)
    assert result["miou"] == pytest.approx(want, abs=1e-12)
    assert result["pixel_accuracy"] == pytest.approx(float(acc), abs=1e-12)


def _unique_best(candidates, objective):
    """The one candidate of highest objective (the test data must make it unique)."""
    values = {m: objective(m) for m in candidates}
    best = max(values.values())
    (winner,) = [m for m, v in values.items() if v == best]
    return winner


# ------------------------------------------------------------------ the cases

A = [[90, 260, 70], [6, 21, 18], [1, 2, 11]]
B = [[20, 80, 140], [12, 12, 0], [0, 3, 0]]


def _image_of(conf):
    """A square image pair whose confusion is ``conf`` (rows gt, columns predicted ids),
    its last row padded with void."""
    gt, pred = [], []
    for g, row in enumerate(conf):
        for k, n in enumerate(row):
            gt += [g] * n
            pred += [k] * n
    side = math.isqrt(len(gt) - 1) + 1
    pad = side * side - len(gt)
    gt = np.array(gt + [VOID] * pad, np.uint8).reshape(side, side)
    return gt, np.array(pred + [0] * pad, np.int64).reshape(side, side)


def test_hand_worked_confusion_a_pixels_against_iou_sum():
    # Hungarian on pixels: the six permutations (clusters for classes 0, 1, 2) match
    # 122, 110, 277, 279, 78, 92 pixels: c1->0, c2->1, c0->2 wins with 260 + 18 + 1.
    assert hungarian_match(np.array(A)).tolist() == [2, 0, 1]
    # Sum of IoU: c1->0 (260/443), c0->1 (6/136), c2->2 (11/102) wins, 0.738868 against
    # 0.738856 for the pixel winner (260/443 + 18/126 + 1/110).
    assert iou_hungarian_match(np.array(A)).tolist() == [1, 0, 2]
    res = _accumulate([_image_of(A)], 3, dataset="coco", n_gt=3)
    pix = (Fraction(260, 443) + Fraction(18, 126) + Fraction(1, 110)) / 3
    iou = (Fraction(260, 443) + Fraction(6, 136) + Fraction(11, 102)) / 3
    assert res["dataset_hungarian"]["mapping"] == [2, 0, 1]
    assert res["dataset_hungarian"]["miou"] == pytest.approx(float(pix), abs=1e-15)
    assert res["dsm"]["mapping"] == [1, 0, 2]
    assert res["dsm"]["miou"] == pytest.approx(float(iou), abs=1e-15)
    assert round(100 * float(pix), 3) == 24.629 and float(iou) > float(pix)


def test_hand_worked_confusion_b_majority_by_pixels_against_by_iou():
    # By pixels every cluster's largest entry is in row 0: all to class 0, IoU 240/267.
    assert majority_match(np.array(B)).tolist() == [0, 0, 0]
    # By IoU: c0 (20/252, 12/44, 0) -> 1; c1 (80/255, 12/107, 3/95) -> 0; c2 -> 0.
    assert iou_majority_match(np.array(B)).tolist() == [1, 0, 0]
    res = _accumulate([_image_of(B)], 3, dataset="coco", n_gt=3)
    assert round(100 * res["majority"]["miou"], 2) == 29.96
    assert res["majority"]["miou"] == pytest.approx(float(Fraction(240, 267) / 3), abs=1e-15)
    # class 0: 220 / (240 + 235 - 220); class 1: 12 / (24 + 32 - 12); class 2: 0
    want = (Fraction(220, 255) + Fraction(12, 44)) / 3
    assert res["dsm_majority"]["mapping"] == [1, 0, 0]
    assert res["dsm_majority"]["miou"] == pytest.approx(float(want), abs=1e-15)
    assert round(100 * res["dsm_majority"]["miou"], 2) == 37.85
    # three ids for three classes: DSM's own protocol uses its Hungarian, not majority
    assert res["dsm"]["mapping"] == iou_hungarian_match(np.array(B)).tolist()


# ------------------------------------------------------ DSM against brute force

IDS = [3, 4, 6]  # fewer, as many and more predicted ids than classes


@pytest.mark.parametrize("n_pred", IDS)
def test_dsm_protocols_equal_brute_force(n_pred):
    pairs = _images(100 + n_pred, n_pred)
    conf = _pixel_confusion(pairs, n_pred)
    res = _accumulate(pairs, n_pred)
    majority = [max(range(N_GT), key=lambda g, k=k: (_iou(conf, g, k), -g)) for k in range(n_pred)]
    if n_pred == N_GT:
        mapping = _unique_best(
            itertools.permutations(range(N_GT)),
            lambda m: sum(_iou(conf, g, k) for k, g in enumerate(m)),
        )
    else:  # DSM votes when the counts differ
        mapping = majority
    assert res["dsm"]["mapping"] == list(mapping)
    _check(res["dsm"], *_remapped_scores(conf, mapping, True), absent_zero=True)
    assert res["dsm_majority"]["mapping"] == majority
    _check(res["dsm_majority"], *_remapped_scores(conf, majority, True), absent_zero=True)


def test_dsm_scores_an_absent_class_zero():
    conf = np.array([[5, 1], [2, 7], [0, 0]])
    out = dsm_scores(conf, [0, 1])
    assert out["per_class_iou"][2] == 0.0
    assert out["miou"] == pytest.approx((5 / 8 + 7 / 10 + 0) / 3)
    assert math.isnan(scores(conf, np.array([0, 1]))["per_class_iou"][2])


# ------------------------------------------------ CAUSE and STEGO against brute force


NEAREST = T.InterpolationMode.NEAREST


def _torchvision(transform):
    """A peer's label transform as torchvision applies it to a PIL label image."""
    return lambda a: np.asarray(transform(Image.fromarray(a.astype(np.uint8))))


def _squash(side):
    return _torchvision(T.Resize((side, side), interpolation=NEAREST))


def _crop(side):
    return _torchvision(T.Compose([T.Resize(side, interpolation=NEAREST), T.CenterCrop(side)]))


def _diffcut_transform(a):
    """DiffCut's: square centre crop of side min - 1 on the tensor, nearest-exact to 1024,
    then torch's default nearest to 128."""
    c = min(a.shape) - 1
    t = T.CenterCrop((c, c))(torch.from_numpy(a.astype(np.uint8))[None])
    big = T.Resize((1024, 1024), interpolation=T.InterpolationMode.NEAREST_EXACT)(t)
    return F.interpolate(big[None].float(), size=(128, 128))[0, 0].to(torch.uint8).numpy()


def _peer_pixel_protocol(pairs, n_pred, transform):
    """CAUSE's and STEGO's rule by brute force: labels resampled by ``transform``,
    pixels with a prediction outside [0, N_GT) dropped, the permutation with most matched
    pixels, IoU over classes present."""
    resampled = [(transform(gt), transform(pred)) for gt, pred in pairs]
    conf = _pixel_confusion(resampled, n_pred)
    square = [row[:N_GT] + [0] * max(0, N_GT - n_pred) for row in conf]
    mapping = _unique_best(
        itertools.permutations(range(N_GT)), lambda m: sum(square[g][k] for k, g in enumerate(m))
    )
    return square, mapping


@pytest.mark.parametrize("n_pred", IDS)
@pytest.mark.parametrize(
    "dataset,backbone,name,side",
    [
        ("voc12", "dino_vits16", "cause_voc", 320),
        ("coco", "dino_vitb8", "cause_coco", 320),
        ("coco", "dinov2_vitb14", "cause_coco", 322),
    ],
)
def test_cause_protocols_equal_brute_force(n_pred, dataset, backbone, name, side):
    pairs = _images(200 + n_pred, n_pred, n_images=3)
    transform = _squash(side) if name == "cause_voc" else _crop(side)
    square, mapping = _peer_pixel_protocol(pairs, n_pred, transform)
    res = _accumulate(pairs, n_pred, dataset=dataset, backbone=backbone)
    assert "cause_coco" not in res if name == "cause_voc" else "cause_voc" not in res
    assert res[name]["mapping"] == list(mapping)
    _check(res[name], *_remapped_scores(square, mapping, False))


@pytest.mark.parametrize("n_pred", IDS)
def test_stego_protocol_equals_brute_force(n_pred):
    pairs = _images(300 + n_pred, n_pred, n_images=3)
    square, mapping = _peer_pixel_protocol(pairs, n_pred, _crop(320))
    res = _accumulate(pairs, n_pred, backbone="dinov2_vits14")  # STEGO stays at 320
    assert res["stego"]["mapping"] == list(mapping)
    _check(res["stego"], *_remapped_scores(square, mapping, False))


def test_surplus_ids_are_dropped_by_cause_and_stego_but_wrong_for_lcseg():
    # id 3 (beyond the 3 classes) covers a third of class 1's pixels
    gt = np.repeat([[0] * 6 + [1] * 6 + [2] * 6], 18, axis=0).astype(np.uint8)
    pred = np.repeat([[0] * 6 + [1] * 4 + [3] * 2 + [2] * 6], 18, axis=0)
    acc = ProtocolAccumulator(3, 4, dataset="voc12")
    acc.add(gt, pred)
    res = acc.results()
    assert res["dataset_hungarian"]["miou"] == pytest.approx((1 + 4 / 6 + 1) / 3)
    assert res["cause_voc"]["miou"] == 1.0 and res["stego"]["miou"] == 1.0
    assert res["cause_voc"]["pixel_accuracy"] == 1.0


# ------------------------------------------------------ DiffCut against brute force


def _best_outcomes(hist, n_rows, width):
    """Every injective assignment of rows to columns with most matched pixels -> its
    (tp, fp, fn, kept columns of rows with pixels in a matched column) outcome."""
    best, outcomes = -1, set()
    for cols in itertools.permutations(range(width), n_rows):
        total = sum(hist[g][k] for g, k in enumerate(cols))
        if total < best:
            continue
        tp = tuple(hist[g][k] for g, k in enumerate(cols))
        fn = tuple(sum(hist[g]) - tp[g] for g in range(n_rows))
        fp = tuple(sum(hist[r][k] for r in range(n_rows)) - hist[g][k] for g, k in enumerate(cols))
        kept = frozenset(cols[g] for g in range(n_rows) if max(hist[g][k] for k in cols) > 0)
        if total > best:
            best, outcomes = total, set()
        outcomes.add((tp, fp, fn, kept))
    assert len(outcomes) == 1, "test data must make DiffCut's outcome unique"
    return next(iter(outcomes))


def _diffcut_image_brute_force(gt, pred):
    """DiffCut's two steps by loops and permutations on one resampled image."""
    n_fg = N_GT - 1
    lab = [(-1 if g in (0, VOID) else g - 1) for g in gt.ravel().tolist()]
    prd = pred.ravel().tolist()
    width = max(n_fg, max(prd) + 1)
    hist = [[0] * width for _ in range(n_fg)]
    for g, p in zip(lab, prd, strict=True):
        if g >= 0:
            hist[g][p] += 1
    *_, kept = _best_outcomes(hist, n_fg, width)
    new_id = max(prd) + 1
    prd = [p if p in kept else new_id for p in prd]
    lab = [n_fg if g == -1 else g for g in lab]
    width = max(N_GT, max(prd) + 1)
    hist = [[0] * width for _ in range(N_GT)]
    for g, p in zip(lab, prd, strict=True):
        hist[g][p] += 1
    tp, fp, fn, _ = _best_outcomes(hist, N_GT, width)
    order = [n_fg, *range(n_fg)]  # DiffCut's class order back to lcseg's
    return [tp[i] for i in order], [fp[i] for i in order], [fn[i] for i in order], len(lab)


@pytest.mark.parametrize("n_pred", IDS)
def test_diffcut_protocol_equals_brute_force(n_pred):
    pairs = _images(400 + n_pred, n_pred, n_images=3)
    tp, fp, fn, total = np.zeros(N_GT), np.zeros(N_GT), np.zeros(N_GT), 0
    for gt, pred in pairs:
        t, f, n, pixels = _diffcut_image_brute_force(
            _diffcut_transform(gt), _diffcut_transform(pred)
        )
        tp, fp, fn, total = tp + t, fp + f, fn + n, total + pixels
    ious = [tp[c] / (tp[c] + fp[c] + fn[c]) for c in range(N_GT)]
    res = _accumulate(pairs, n_pred)["diffcut"]
    _check(res, ious, Fraction(int(tp.sum()), total))


def test_diffcut_scores_void_as_background_and_merges_unmatched_clusters():
    # one image at its scoring size: class 1 split over ids 1 and 3 (1 kept, 3 merged
    # into the new background id 4 with id 0); void counts as background
    gt = np.array([[0, 0, VOID, 1, 1, 1, 2, 2]], np.uint8)
    pred = np.array([[0, 0, 0, 1, 1, 3, 2, 2]])
    tp, fp, fn, n = diffcut_image_counts(gt, pred, 3)
    assert n == 8
    # step 2 columns: background <- id 4 (ids 0 and 3), class 1 <- 1, class 2 <- 2
    assert tp.tolist() == [3, 2, 2] and fn.tolist() == [0, 1, 0] and fp.tolist() == [1, 0, 0]


# ------------------------------------------- the label transforms against torchvision


@pytest.mark.parametrize("shape", [(7, 13), (375, 500), (333, 250), (320, 320)])
def test_transforms_equal_torchvision(shape):
    rng = np.random.default_rng(shape[0])
    a = rng.integers(0, 256, size=shape).astype(np.uint8)
    for side in (320, 322):
        np.testing.assert_array_equal(resample(a, ("squash", side)), _squash(side)(a))
        np.testing.assert_array_equal(resample(a, ("crop", side)), _crop(side)(a))
    pil = Image.fromarray(a).resize((320, 320), Image.Resampling.NEAREST)
    np.testing.assert_array_equal(resize_nearest(a, 320, 320), np.asarray(pil))
    np.testing.assert_array_equal(resample(a, ("diffcut", 128)), _diffcut_transform(a))


def test_cause_variant_follows_dataset_and_backbone():
    assert cause_protocol("voc12", "dino_vitb8") == ("cause_voc", ("squash", 320))
    assert cause_protocol("demo", "dinov2_vits14") == ("cause_voc", ("squash", 322))
    assert cause_protocol("coco", "vit_base_patch14_dinov2.lvd142m") == (
        "cause_coco",
        ("crop", 322),
    )
    assert cause_protocol("folder", None) == ("cause_coco", ("crop", 320))


# ------------------------------------------------------------ metrics and the data file


def test_protocol_metrics_describe_every_protocol():
    pairs = _images(500, 5, n_images=2)
    acc = ProtocolAccumulator(N_GT, 5, dataset="coco")
    for g, p in pairs:
        acc.add(g, p)
    names = ["bg", "a", "b", "c"]
    out = protocol_metrics(acc.results(names))
    assert list(out) == [p for p in PROTOCOLS if p != "cause_voc"]
    for name, entry in out.items():
        assert {"miou", "pixel_accuracy", "per_class_iou", "rule", "reproduces"} <= set(entry)
        assert list(entry["per_class_iou"]) == names
        assert ("mapping" in entry) == (name != "diffcut")
    assert "deep-spectral-segmentation" in out["dsm"]["reproduces"]
    assert "DiffCut" in out["diffcut"]["reproduces"]
    with pytest.raises(ValueError, match="im9.*prediction value 5"):
        acc.add(pairs[0][0], np.full(pairs[0][0].shape, 5), image_id="im9")


def test_published_numbers_file_and_its_errors(tmp_path):
    rows = published_results()
    got = {(r["method"], r["dataset"]): (r["protocol"], r["miou"]) for r in rows}
    assert got[("CAUSE-TR", "voc12")] == ("cause_voc", 53.3)
    assert got[("CAUSE-TR", "coco")] == ("cause_coco", 21.2)
    assert got[("COMUS", "voc12")] == ("dsm", 50.0) and got[("COMUS", "coco")][1] == 19.6
    assert got[("DSM", "voc12")] == ("dsm", 37.2)
    assert got[("DiffCut", "voc12")][0] == "diffcut"
    assert all(r["trains"] and r["backbone"] and r["paper"] for r in rows)
    bad = tmp_path / "mine.csv"
    header = "method,paper,protocol,dataset,backbone,trains,miou\n"
    bad.write_text(header + "X,P,hungarian_iou,voc12,B,no,40\n")
    with pytest.raises(ValueError, match=r"mine\.csv: row 2 names protocol 'hungarian_iou'"):
        published_results(bad)
    bad.write_text(header + "X,P,dsm,voc12,B,no,forty\n")
    with pytest.raises(ValueError, match=r"mine\.csv: row 2 has miou 'forty'"):
        published_results(bad)
