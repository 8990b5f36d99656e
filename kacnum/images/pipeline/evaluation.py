"""The evaluation stage: FID and KID of every sample set with bootstrap intervals, the student/teacher ratios
and comparisons, the FID floor of real held-out images, written as ``results.json`` and ``results.md``
(docs/mathematics.md §10-11)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping, Optional, Union

import torch

from kacnum.core.checkpoint import atomic_write, save_json
from kacnum.images.metrics import (ClassifierExtractor, FeatureExtractor, FeatureStats, KIDReference, calc_fid,
                                   classifier_accuracy, double_ratio_interval, extract_features, fid_bootstrap, kid,
                                   n_for_precision, paired_ratio_interval, ratio_interval, ratio_interval_curve)
from kacnum.images.train import save_image_grid

from .config import LITERATURE_CIFAR10, METHODS, PAPER_CIFAR10, STUDENT_TEACHERS, TARGETS, method_label
from .samples import SAMPLES_SUFFIX, SampleSet, _beside, _export_npz, coupled_sets
from .tables import _markdown

__all__ = ["eval_stage", "FLOOR_ABOUT"]


def _method_order(m: str) -> int:
    """Position of method ``m`` in the tables (:data:`METHODS`' order; unknown methods last)."""
    keys = list(METHODS)
    return keys.index(m) if m in keys else len(keys)


def _sample_file(s) -> Optional[Path]:
    """The ``.samples.pt`` file behind an item of ``eval_stage``'s ``sample_sets`` (None for a set in memory)."""
    if isinstance(s, SampleSet):
        return None
    return Path(s["file"]) if isinstance(s, Mapping) else Path(s)


#: what the floor row is and why generated rows can score under it (results.json's ``floor.about``, results.md)
FLOOR_ABOUT = (
    "The floor is the FID of n real held-out images (a split the reference statistics did not use) against the "
    "same reference, n the generated count of the teacher's row: what a generator drawing exactly from the data "
    "law would score at this n. An FID computed from n images is biased upwards, by about a constant over n that "
    "grows with the spread of the set's features, and at small n this bias is most of the floor's value. Guided "
    "samples are less diverse than real images (guidance pulls each class towards its typical images), so their "
    "bias is smaller and they can score under the floor: a row under it is not better than real data. Compare "
    "rows of the same n with each other, and read the floor as the size of the small-n bias.")


def _floor_row(floor: Mapping, rows: list, ti: Optional[int], reference: FeatureStats, extractor: FeatureExtractor,
               kid_reference, n_boot: int, seed: int) -> dict:
    """FID of real held-out images, as many as the teacher's (else the largest) generated set, against the
    same reference: the value a perfect generator would get at this n (:data:`FLOOR_ABOUT`, kept in the row as
    ``about``). ``below_floor`` lists the generated rows that score under it."""
    split = floor.get("split", "test")
    row = {"method": "real_heldout", "label": f"real held-out images ({split} split): the FID floor",
           "split": split, "fid": None, "fid_interval": None, "kid": None, "n": 0, "note": floor.get("note"),
           "about": FLOOR_ABOUT, "below_floor": []}
    images = floor.get("images")
    if images is None:
        row["note"] = row["note"] or "no held-out split: floor not measured"
        return row
    want = rows[ti]["n_generated"] if ti is not None else max(r["n_generated"] for r in rows)
    x = images[:want].clamp(-1, 1)
    f = extract_features(x, extractor)
    b = fid_bootstrap(f, reference, n_boot=n_boot, seed=seed)
    row.update({"fid": calc_fid(torch.from_numpy(f), reference, extractor).value, "fid_interval": [b.lo, b.hi],
                "fid_std": b.std, "n": int(x.shape[0]),
                "kid": None if kid_reference is None else kid(f, kid_reference, n_boot=n_boot, seed=seed).to_dict()})
    if x.shape[0] < want:
        row["note"] = (row["note"] + "; " if row["note"] else "") + \
            f"only {x.shape[0]} held-out images, fewer than the {want} generated per set"
    row["below_floor"] = [{"method": r["method"], "label": r["label"], "nfe": r["nfe"], "fid": r["fid"]}
                          for r in rows if r["fid"] is not None and r["fid"] < row["fid"]]
    return row


def _as_sample_set(s) -> SampleSet:
    """An item of ``eval_stage``'s ``sample_sets`` (a set, a record with ``file``, or a path) as a set."""
    if isinstance(s, SampleSet):
        return s
    if isinstance(s, Mapping):
        return SampleSet.load(s["file"])
    return SampleSet.load(s)


def eval_stage(sample_sets: Iterable[Union[SampleSet, str, Path, Mapping]], reference: FeatureStats,
               extractor: FeatureExtractor, out_dir: Union[str, Path], *,
               teacher: tuple = ("kac_teacher", 100), dataset: Optional[str] = None,
               paper: Mapping = PAPER_CIFAR10, literature: Mapping = LITERATURE_CIFAR10,
               grid_images_per_method: int = 10, title: Optional[str] = None, extra: Optional[dict] = None,
               json_name: str = "results.json", md_name: str = "results.md", progress: bool = False,
               n_boot: int = 200, boot_seed: int = 0, kid_reference=None, floor: Optional[Mapping] = None,
               interval_curve: bool = True, precision_target: float = 0.05) -> dict:
    """FID (with its protocol) of every sample set; ``results.json``, ``results.md`` (names: ``json_name``,
    ``md_name``), grids per NFE.

    Rows (``results.json["rows"]``, sorted by method then NFE descending): ``method``, ``label``,
    ``nfe``, ``nfe_model``, ``guidance``, ``fid``, ``protocol`` (extractor name, layer, resize,
    reference data set and split, extractor weights hash, ...), ``n_generated``, ``n_reference`` and,
    for class-conditional samples with a classifier extractor, ``accuracy`` (share classified as the
    label they were generated for).

    ``results.json`` also holds ``ratios`` (every ``distillkac`` FID over the ``teacher`` row's FID,
    next to the paper's CIFAR-10 ratios) and ``targets`` (1-step ≤ 1.4×, 4-step ≤ 1.1× the teacher,
    every student below ``vp_ddim``, ``fm_euler`` and ``fm_ab2`` at its NFE). ``results.md`` is the
    paper's layout (method | NFE | FID ours | FID paper) with the DistillKac paper's own CIFAR-10
    numbers and other papers' CIFAR-10 numbers in two separate, labelled columns; ``grid_nfe<NNN>.png``
    shows ``grid_images_per_method`` images of every method at that NFE, one method per row, in the
    order of the ``grids`` entry.

    Error bars (:mod:`kacnum.images.metrics`): every row has ``fid_interval`` (95 %, :func:`~kacnum.images.metrics.fid_bootstrap`
    with ``n_boot`` resamples, seed ``boot_seed + row index``), ``fid_std``, ``fid_bootstrap`` and, when
    ``kid_reference`` (a :class:`~kacnum.images.metrics.KIDReference` or reference features) is given, ``kid``
    (value, std over subsets, interval); ``solver``, ``steps`` and ``time_grid`` of the sampler. Ratios and
    comparisons carry their ``interval`` and ``paired``: two *coupled* sets (:func:`coupled_sets`: same latent
    seed, batches, labels and path, e.g. a student and its teacher) take the paired interval
    (:func:`kacnum.images.metrics.paired_ratio_interval`, pairs resampled: the shared sampling noise cancels), other
    pairs the independent bootstraps. ``degradation``: per step count ``K`` with both DistillKac and DistillFM
    students, (distillkac_K / Kac teacher) / (distillfm_K / FM teacher) with its interval
    (:func:`kacnum.images.metrics.double_ratio_interval`). ``comparisons`` / ``targets`` compare every student with
    the other methods at equal network evaluations first (``nfe_model``: a guided teacher or baseline
    step costs 2, a student step 1), then at equal solver steps (``nfe``); ``decided`` says whether the
    ratio's interval excludes 1. ``interval_vs_n``: the half-width of each student/teacher ratio's
    interval at n, n/2, n/4, n/8 and the n predicted for ``±precision_target``. ``floor``: real held-out
    images (``floor={"images": (N, C, H, W) or None, "split": ..., "note": ...}``) of the generated
    count against the same reference, the FID floor (None images: a row that says why there is none).
    ``results.md`` shows the network-evaluation view first. Every set read from a file also gets its
    ``.npz`` + ``.json`` (:func:`kacnum.images.metrics.save_sample_set`) if it had none.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    items = list(sample_sets)
    sets = [_as_sample_set(s) for s in items]
    if not sets:
        raise ValueError("sample_sets must hold at least one sample set")
    for item, s in zip(items, sets):  # sets of older runs: write the .npz + .json beside their file once
        f = _sample_file(item)
        if f is not None and f.name.endswith(SAMPLES_SUFFIX) and not _beside(f, ".npz").is_file():
            _export_npz(s, f)
    sets.sort(key=lambda s: (_method_order(s.method), -s.nfe, s.guidance if s.guidance is not None else 0.0))
    if kid_reference is not None and not isinstance(kid_reference, KIDReference):
        kid_reference = KIDReference(kid_reference, seed=boot_seed)
    rows, feats, boots = [], [], []
    for i, s in enumerate(sets):
        x = s.images.clamp(-1, 1)
        f = extract_features(x, extractor, progress=progress)
        r = calc_fid(torch.from_numpy(f), reference, extractor)
        b = fid_bootstrap(f, reference, n_boot=n_boot, seed=boot_seed + i)  # one seed per row: independent
        acc = None
        if s.labels is not None and isinstance(extractor, ClassifierExtractor) \
                and int(s.labels.max()) < extractor.model.config.num_classes:
            acc = classifier_accuracy(extractor, x, s.labels)
        rows.append({
            "method": s.method, "label": method_label(s.method, s.meta), "nfe": s.nfe, "nfe_model": s.nfe_model,
            "guidance": s.guidance, "fid": r.value, "fid_interval": [b.lo, b.hi], "fid_std": b.std,
            "fid_bootstrap": b.to_dict(),
            "kid": None if kid_reference is None else kid(f, kid_reference, n_boot=n_boot, seed=boot_seed + i).to_dict(),
            "solver": s.meta.get("solver"), "steps": s.meta.get("steps", s.nfe),
            "time_grid": s.meta.get("time_grid", "uniform"),
            "protocol": {"extractor": r.extractor, "resize": r.resize, "reference_dataset": r.reference_dataset,
                         "reference_split": r.reference_split, "n_generated": r.n_generated,
                         "n_reference": r.n_reference, "network": r.protocol},
            "n_generated": r.n_generated, "n_reference": r.n_reference, "accuracy": acc,
            "paper_fid_cifar10": paper.get((s.method, s.nfe)) if s.method != "kac_teacher_sweep" else None,
            "literature_fid_cifar10": literature.get((s.method, s.nfe)),
        })
        feats.append(f)
        boots.append(b)

    def index_of(method, nfe=None, nfe_model=None):
        for j, row in enumerate(rows):
            if row["method"] == method and (nfe is None or row["nfe"] == nfe) \
                    and (nfe_model is None or row["nfe_model"] == nfe_model):
                return j
        return None

    def fid_of(method, nfe):
        j = index_of(method, nfe)
        return None if j is None else rows[j]["fid"]

    ti = index_of(*teacher)
    t_fid = None if ti is None else rows[ti]["fid"]
    ratios, goals, by_evals, by_steps, comparisons = {}, {}, {}, {}, []
    others = ("kac_teacher", "kac_teacher_fewstep", "vp_ddim", "fm_euler", "fm_ab2", "vp_pd")
    paired_cache = {}

    def ratio_of(j, k, seed=boot_seed):
        """FID ratio rows j / k with its interval: paired (pairs resampled) when the two sets are coupled
        (same latents and labels, see :func:`coupled_sets`), else from the two independent bootstraps."""
        if coupled_sets(sets[j], sets[k]):
            if (j, k, seed) not in paired_cache:
                paired_cache[j, k, seed] = paired_ratio_interval(feats[j], feats[k], reference, n_boot=n_boot,
                                                                 seed=seed)
            return paired_cache[j, k, seed]
        return ratio_interval(boots[j], boots[k])

    def compare(j, k, kind):
        q = ratio_of(j, k)
        lo, hi = q["interval"]
        comparisons.append({"kind": kind, "student": rows[j]["method"], "student_nfe": rows[j]["nfe"],
                            "other": rows[k]["method"], "other_nfe": rows[k]["nfe"],
                            "nfe_model": [rows[j]["nfe_model"], rows[k]["nfe_model"]],
                            "student_fid": rows[j]["fid"], "other_fid": rows[k]["fid"],
                            "fid_ratio": q["value"], "fid_ratio_interval": [lo, hi],
                            "student_better": rows[j]["fid"] < rows[k]["fid"], "paired": q["paired"],
                            "decided": bool(hi < 1.0 or lo > 1.0)})
        return rows[j]["fid"] < rows[k]["fid"]

    for j, row in enumerate(rows):
        if row["method"] != "distillkac":
            continue
        n, m = row["nfe"], row["nfe_model"]
        for other in others:  # equal network evaluations first (a guided step costs 2, a student step 1)
            k = index_of(other, nfe_model=m)
            if k is not None:
                by_evals[f"distillkac beats {other} at {m} network evaluations"] = compare(j, k, "network evaluations")
        if t_fid:
            p_s, p_t = paper.get(("distillkac", n)), paper.get(tuple(teacher))
            q = ratio_of(j, ti)
            ratios[f"distillkac_{n}/teacher"] = {"ours": row["fid"] / t_fid, "interval": q["interval"],
                                                 "paired": q["paired"],
                                                 "relative_half_width": q["relative_half_width"],
                                                 "nfe_model": m, "teacher_nfe_model": rows[ti]["nfe_model"],
                                                 "paper_cifar10": p_s / p_t if p_s and p_t else None,
                                                 "student": "distillkac", "nfe": n, "teacher_method": rows[ti]["method"]}
            if n in TARGETS:
                goals[f"{n}-step <= {TARGETS[n]}x teacher"] = row["fid"] / t_fid <= TARGETS[n]
        for other in ("vp_ddim", "fm_euler", "fm_ab2", "vp_pd"):  # then equal solver steps (the paper's NFE)
            k = index_of(other, nfe=n)
            if k is not None:
                by_steps[f"distillkac beats {other} at NFE {n}"] = compare(j, k, "solver steps")
    # the controls: every other student over its own teacher (DistillFM over the FM teacher sampled like the Kac
    # teacher; one-shot students over their staged run's teacher), then Kac students against DistillFM and staged
    # against one-shot at equal solver steps and equal network evaluations
    fm_t = [j for j, r in enumerate(rows) if r["method"] == "fm_teacher"]
    fi = max(fm_t, key=lambda j: rows[j]["nfe"]) if fm_t else None
    for j, row in enumerate(rows):
        mth = row["method"]
        if mth not in STUDENT_TEACHERS or mth == "distillkac":
            continue
        tj = ti if STUDENT_TEACHERS[mth] == "kac_teacher" else fi
        if tj is None or not rows[tj]["fid"]:
            continue
        q = ratio_of(j, tj)
        ratios[f"{mth}_{row['nfe']}/{'teacher' if tj == ti else rows[tj]['method']}"] = {
            "ours": row["fid"] / rows[tj]["fid"], "interval": q["interval"], "paired": q["paired"],
            "relative_half_width": q["relative_half_width"], "nfe_model": row["nfe_model"],
            "teacher_nfe_model": rows[tj]["nfe_model"], "paper_cifar10": None, "student": mth, "nfe": row["nfe"],
            "teacher_method": rows[tj]["method"]}
    controls = {}
    for a, b in (("distillkac", "distillfm"), ("distillkac", "distillkac_oneshot"), ("distillfm", "distillfm_oneshot"),
                 ("distillkac", "reflow_fm"), ("distillfm", "reflow_fm"), ("distillkac", "reflow_kac")):
        for j, row in enumerate(rows):
            k = index_of(b, nfe=row["nfe"], nfe_model=row["nfe_model"]) if row["method"] == a else None
            if k is not None:
                controls[f"{a} beats {b} at NFE {row['nfe']}"] = compare(j, k, "control")
    targets = {**by_evals, **goals, **by_steps, **controls}
    # the thesis in one number per step count: how much a Kac teacher loses in distillation against how much
    # the FM teacher loses, (distillkac_K / kac teacher) / (distillfm_K / fm teacher), both ratios paired
    degradation = {}
    for j, row in enumerate(rows):
        k = index_of("distillfm", nfe=row["nfe"]) if row["method"] == "distillkac" else None
        if k is None or ti is None or fi is None or not (coupled_sets(sets[j], sets[ti])
                                                         and coupled_sets(sets[k], sets[fi])):
            continue
        qa, qb = ratio_of(j, ti, boot_seed), ratio_of(k, fi, boot_seed + 1)
        d = double_ratio_interval(qa, qb)
        degradation[str(row["nfe"])] = {"kac_ratio": qa["value"], "kac_interval": qa["interval"],
                                        "fm_ratio": qb["value"], "fm_interval": qb["interval"],
                                        "kac_over_fm": d["value"], "interval": d["interval"],
                                        "kac_degrades_less": d["value"] < 1.0,
                                        "decided": bool(d["interval"][1] < 1.0 or d["interval"][0] > 1.0)}

    # interval of each student/teacher ratio against n: choose n for +-precision_target
    interval_vs_n = {}
    if interval_curve and ti is not None:
        for j, row in enumerate(rows):
            if row["method"] != "distillkac":
                continue
            n_all = min(feats[j].shape[0], feats[ti].shape[0])
            ns = sorted({v for v in (n_all, n_all // 2, n_all // 4, n_all // 8) if v >= 10})
            if not ns:
                continue
            curve = ratio_interval_curve(feats[j], feats[ti], reference, ns, n_boot=n_boot, seed=boot_seed,
                                         paired=coupled_sets(sets[j], sets[ti]))
            interval_vs_n[f"distillkac_{row['nfe']}/teacher"] = {
                "curve": curve, "n_for_target": n_for_precision(curve, precision_target)}

    floor_row = None
    if floor is not None:
        floor_row = _floor_row(floor, rows, ti, reference, extractor, kid_reference, n_boot, boot_seed + len(rows))

    # grids per NFE: one row of images per method
    grids = {}
    k = grid_images_per_method
    for nfe in sorted({s.nfe for s in sets}, reverse=True):
        chosen = [s for s in sets if s.nfe == nfe]
        imgs = []
        for s in chosen:
            x = s.images[:k].clamp(-1, 1)
            if x.shape[0] < k:
                x = torch.cat([x, torch.ones((k - x.shape[0],) + tuple(x.shape[1:]))])
            imgs.append(x)
        row_names = [f"{s.method}" + (f" (s={s.guidance:g})" if s.method == "kac_teacher_sweep" else "")
                     for s in chosen]
        f = save_image_grid(torch.cat(imgs), out_dir / f"grid_nfe{nfe:03d}.png", nrow=k,
                            scale=max(1, 64 // sets[0].images.shape[-1]), row_labels=row_names)
        grids[str(nfe)] = {"file": str(f), "rows": row_names}

    proto = rows[0]["protocol"]
    ds = dataset or proto["reference_dataset"]
    result = {"dataset": ds, "teacher": list(teacher), "teacher_fid": t_fid, "protocol": proto,
              "rows": rows, "ratios": ratios, "targets": targets, "grids": grids, "extra": extra or {},
              "floor": floor_row, "comparisons": comparisons, "interval_vs_n": interval_vs_n,
              "degradation": degradation,
              "bootstrap": {"n_boot": n_boot, "seed": boot_seed, "level": 0.95, "method": "centered",
                            "precision_target": precision_target},
              "kid_protocol": None if kid_reference is None else {
                  "kernel": "(x.y/d + 1)^3", "n_subsets": kid_reference.n_subsets,
                  "subset_size": kid_reference.subset_size, "n_reference": kid_reference.n_reference}}
    save_json(out_dir / json_name, result)
    md = _markdown(result, title)
    atomic_write(out_dir / md_name, lambda f: f.write(md), mode="w")
    return result
