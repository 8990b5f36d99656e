"""The tables of ``results.md``: FID by network evaluations and by solver steps, the ratios, the comparisons
and the FID floor, from the result dict of :func:`~kacnum.images.pipeline.evaluation.eval_stage`."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

from .config import TARGETS, method_label

__all__: list = []


def _fid_cell(fid, interval) -> str:
    """``FID [lo, hi]`` (``—`` when not measured)."""
    if fid is None:
        return "—"
    if not interval:
        return _fmt(fid, ".4g")
    return f"{_fmt(fid, '.4g')} [{_fmt(interval[0], '.3g')}, {_fmt(interval[1], '.3g')}]"


def _kid_cell(k) -> str:
    """KID × 10³ ± its std over reference subsets (``—`` when not measured)."""
    if not k:
        return "—"
    return f"{1e3 * k['value']:.3g} ± {1e3 * k['std']:.2g}"


def _fmt(v, spec=".3g") -> str:
    """``format(v, spec)``, ``—`` for None or a non-finite float."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    return format(v, spec)


def _floor_lines(fl: dict) -> list[str]:
    """The floor's explanation (``about``) and the generated rows under it (``below_floor``); nothing when the
    floor was not measured."""
    if fl.get("fid") is None:
        return []
    lines = ["", fl["about"]] if fl.get("about") else []
    below = fl.get("below_floor") or []
    if below:
        names = "; ".join(f"{b['label']}, NFE {b['nfe']}: {_fmt(b['fid'], '.4g')}" for b in below)
        lines += ["", f"Rows under the floor here ({_fmt(fl['fid'], '.4g')} at n = {fl.get('n')}): {names}."]
    return lines


def _nfe_view(res: dict) -> list[str]:
    """The table by network evaluations (rows) and method (columns), then the comparisons at equal
    network evaluations and at equal solver steps."""
    rows = res["rows"]
    methods = []
    for r in rows:
        key = (r["method"], r["guidance"]) if r["method"] == "kac_teacher_sweep" else (r["method"], None)
        if key not in methods:
            methods.append(key)
    labels = {}
    for r in rows:
        labels.setdefault(r["method"], r.get("label") or method_label(r["method"]))
    head = [labels[m] + (f" (s={g:g})" if g is not None else "") for m, g in methods]
    lines = ["", "## NFE (network evaluations)", "",
             "Network evaluations per image: a guided teacher or baseline step costs 2, a distilled student step 1. "
             "FID [95 % interval].", "",
             "| network evals | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
    for m_evals in sorted({r["nfe_model"] for r in rows}, reverse=True):
        cells = []
        for m, g in methods:
            hit = [r for r in rows if r["method"] == m and r["nfe_model"] == m_evals
                   and (g is None or r["guidance"] == g)]
            cells.append(_fid_cell(hit[0]["fid"], hit[0].get("fid_interval")) if hit else "—")
        lines.append(f"| {m_evals} | " + " | ".join(cells) + " |")
    fl = res.get("floor")
    if fl is not None:
        lines += ["", f"FID floor (real {fl['split']}-split images, {fl.get('n') or 0} of them, against the same "
                      f"reference): {_fid_cell(fl['fid'], fl.get('fid_interval'))}"
                  + (f"; {fl['note']}" if fl.get("note") else "")] + _floor_lines(fl)
    comps = res.get("comparisons") or []
    for kind, title in (("network evaluations", "At equal network evaluations"), ("solver steps",
                                                                                  "At equal solver steps"),
                        ("control", "Controls (Kac students against DistillFM, staged against one-shot; equal "
                                    "steps and network evaluations)")):
        sel = [c for c in comps if c["kind"] == kind]
        if not sel:
            continue
        lines += ["", f"{title} (student FID / other FID with its 95 % interval; decided: the interval excludes 1):",
                  ""]
        for c in sel:
            lo, hi = c["fid_ratio_interval"]
            verdict = ("better" if c["student_better"] else "worse") + ("" if c["decided"] else ", not decided")
            at = f"{c['nfe_model'][0]} evals" if kind == "network evaluations" else f"NFE {c['student_nfe']}"
            who = "DistillKac" if c["student"] == "distillkac" else c["student"]
            lines.append(f"- {at}: {who} {c['student_nfe']}-step {_fmt(c['student_fid'], '.4g')} "
                         f"vs {c['other']} {c['other_nfe']}-step ({c['nfe_model'][1]} evals) {_fmt(c['other_fid'], '.4g')}: "
                         f"ratio {c['fid_ratio']:.3f} [{lo:.3f}, {hi:.3f}], {verdict}")
    deg = res.get("degradation") or {}
    if deg:
        lines += ["", "Which teacher loses less in distillation: (DistillKac / Kac teacher) over (DistillFM / FM teacher), "
                      "each ratio over a teacher sampled from the same latents (paired intervals):", ""]
        for n, d in sorted(deg.items(), key=lambda kv: -int(kv[0])):
            lo, hi = d["interval"]
            lines.append(f"- {n} steps: Kac {d['kac_ratio']:.3f} [{d['kac_interval'][0]:.3f}, {d['kac_interval'][1]:.3f}], "
                         f"FM {d['fm_ratio']:.3f} [{d['fm_interval'][0]:.3f}, {d['fm_interval'][1]:.3f}]; Kac / FM "
                         f"{d['kac_over_fm']:.3f} [{lo:.3f}, {hi:.3f}]"
                         + (", not decided" if not d["decided"] else
                            (": the Kac teacher loses less" if d["kac_degrades_less"] else ": the FM teacher loses less")))
    return lines


def _markdown(res: dict, title: Optional[str]) -> str:
    proto = res["protocol"]
    net = proto.get("network") or {}
    ds = res["dataset"]
    lines = [f"# {title or f'DistillKac pipeline on {ds}: FID by NFE'}", ""]
    feat = f"{proto['extractor']} ({net.get('layer', '?')} features, dim {net.get('feature_dim', '?')})"
    lines.append(f"FID protocol (ours): {feat}, resize {proto.get('resize')}, reference {proto['reference_dataset']}/"
                 f"{proto['reference_split']} ({proto['n_reference']} images), {proto['n_generated']} generated "
                 f"images per row.")
    if net.get("test_accuracy") is not None:
        lines.append(f"The feature classifier's test accuracy: {net['test_accuracy']:.4f}.")
    if proto["extractor"] != "inception-v3-fid":
        lines.append("These FIDs use the project's own classifier features, not Inception: they are not "
                     "comparable with Inception FIDs; compare the ratios.")
    boot = res.get("bootstrap") or {}
    if boot:
        lines.append(f"FID [95 % interval]: bootstrap over the generated images ({boot['n_boot']} resamples, fixed "
                     f"seed, reference statistics fixed); the interval is the spread at this sample count. "
                     f"KID × 10³ ± std over reference subsets, kernel (x·y/d + 1)³.")
    lines += _nfe_view(res)
    fl = res.get("floor")
    lines += ["", "## Every set (equal solver steps)", "",
              "NFE = solver steps (calls of the guided field, the paper's count); network evals count the two "
              "halves of a guided call.", "",
              f"| method | NFE | network evals | guidance | FID, ours ({ds}) | FID 95 % interval | KID × 10³ | "
              f"time grid | class accuracy | FID, DistillKac paper (CIFAR-10, the paper's own table) | "
              f"FID, other papers (CIFAR-10, literature) |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        iv = r.get("fid_interval")
        lines.append(f"| {r['label']} | {r['nfe']} | {r['nfe_model']} | {_fmt(r['guidance'], 'g')} | "
                     f"{_fmt(r['fid'], '.4g')} | {'—' if not iv else f'[{iv[0]:.3g}, {iv[1]:.3g}]'} | "
                     f"{_kid_cell(r.get('kid'))} | {r.get('time_grid', 'uniform')} | "
                     f"{_fmt(r['accuracy'], '.3f')} | {_fmt(r['paper_fid_cifar10'], '.2f')} | "
                     f"{_fmt(r['literature_fid_cifar10'], '.2f')} |")
    if fl is not None:
        iv = fl.get("fid_interval")
        lines.append(f"| {fl['label']}{' (' + fl['note'] + ')' if fl.get('note') else ''} | — | 0 | — | "
                     f"{_fmt(fl['fid'], '.4g')} | {'—' if not iv else f'[{iv[0]:.3g}, {iv[1]:.3g}]'} | "
                     f"{_kid_cell(fl.get('kid'))} | — | — | — | — |")
        if fl.get("fid") is not None:
            lines += ["", "The last row is the FID floor of real held-out images: see the note under the first table "
                          "for what it measures and why generated rows can score under it at small n."]
    if res["ratios"]:
        lines += ["", f"Student / teacher FID ratios (teacher: {res['teacher'][0]} at NFE {res['teacher'][1]}, "
                  f"FID {_fmt(res['teacher_fid'], '.4g')}):", "",
                  "| ratio | network evals (student / teacher) | ours | 95 % interval | DistillKac paper (CIFAR-10) "
                  "| target | n for ±5 % |", "|---|---|---|---|---|---|---|"]
        ivn = res.get("interval_vs_n") or {}
        for name, v in res["ratios"].items():
            n = int(name.split("/")[0].rsplit("_", 1)[1])
            kac = v.get("student", "distillkac") == "distillkac"
            iv = v.get("interval")
            need = (ivn.get(name) or {}).get("n_for_target")
            lines.append(f"| {name} | {v.get('nfe_model', '?')} / {v.get('teacher_nfe_model', '?')} | "
                         f"{_fmt(v['ours'], '.3f')} | {'—' if not iv else f'[{iv[0]:.3f}, {iv[1]:.3f}]'} | "
                         f"{_fmt(v['paper_cifar10'], '.3f')} | "
                         f"{'≤ ' + format(TARGETS[n], 'g') if (n in TARGETS and kac) else '—'} | "
                         f"{'—' if not need else need['predicted']} |")
        both = sorted({v["nfe"] for v in res["ratios"].values() if v.get("student") == "distillfm"}, reverse=True)
        if both:
            lines += ["", "The thesis: student/teacher ratio of the Kac students against the Gaussian FM students "
                          "distilled the same way (each over its own 100-step-class teacher):", "",
                      "| student steps | DistillKac ratio [95 %] | DistillFM ratio [95 %] |", "|---|---|---|"]
            cell = lambda v: "—" if v is None else (f"{v['ours']:.3f}" + ("" if not v.get("interval") else  # noqa: E731
                                                    f" [{v['interval'][0]:.3f}, {v['interval'][1]:.3f}]"))
            for n in both:
                lines.append(f"| {n} | {cell(res['ratios'].get(f'distillkac_{n}/teacher'))} | "
                             f"{cell(res['ratios'].get(f'distillfm_{n}/fm_teacher'))} |")
    if res["targets"]:
        lines += ["", "Goals:", ""] + [f"- {k}: {'yes' if v else 'no'}" for k, v in res["targets"].items()]
    if res["grids"]:
        lines += ["", "Sample grids (one method per row, top to bottom):", ""]
        for nfe, g in res["grids"].items():
            lines.append(f"- NFE {nfe}: `{Path(g['file']).name}`: {', '.join(g['rows'])}")
    return "\n".join(lines) + "\n"
