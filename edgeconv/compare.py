"""``edgeconv compare``: a latency and accuracy regression gate between two tagged sets of results
(``bench --tag`` / ``eval --tag``), for CI.

Rows are matched on model, format, precision, runtime, device and threads. The device of a host is
its CPU model (CI machines get new host names every run); of a phone or board its name and serial.

Latency: the ratio of the candidate's median to the baseline's, with a bootstrap confidence interval
from the stored raw timings (both sides resampled with replacement, ``RESAMPLES`` times, numpy's
generator seeded, so the same data always gives the same interval). A row is a **regression** only
when the whole interval lies above ``1 + max_slowdown``: the limit absorbs the few percent two
processes of the same artifact differ by (placement, allocator), the interval the run's own noise.
A ratio over the limit whose interval still reaches below it is **inconclusive**, as is any
regression or speed-up where either run's stability verdict is not ``stable`` — noise is never
passed off as a regression, as a speed-up or as a pass. Runs without raw timings (benchmark_model's
aggregates) are compared on their medians (or means) without an interval.

Accuracy: the newest top-1 per model/format/precision of each tag; a drop of more than
``max_drop`` points is a regression (the binomial standard error is shown, not used: as ``check``).

Exit status (the CLI's): 1 when a row is a regression, 0 otherwise.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .errors import UserError
from .store import Store

RESAMPLES = 2000
SEED = 0
DEFAULT_MAX_SLOWDOWN_PCT = 5.0
DEFAULT_MAX_DROP_PT = 1.0
REGRESSION, INCONCLUSIVE, NO_REGRESSION, FASTER = "regression", "inconclusive", "no regression", "faster"


def bootstrap_ratio_ci(base: np.ndarray, cand: np.ndarray, confidence: float = 0.95,
                       resamples: int = RESAMPLES, seed: int = SEED) -> tuple[float, float]:
    """Percentile bootstrap interval of median(cand) / median(base)."""
    rng = np.random.default_rng(seed)
    base, cand = np.asarray(base, dtype=np.float64), np.asarray(cand, dtype=np.float64)
    ratios = np.empty(resamples)
    chunk = max(1, 2_000_000 // max(base.size, cand.size))  # bound the resample matrix to ~16 MB
    for start in range(0, resamples, chunk):
        k = min(chunk, resamples - start)
        mb = np.median(base[rng.integers(0, base.size, (k, base.size))], axis=1)
        mc = np.median(cand[rng.integers(0, cand.size, (k, cand.size))], axis=1)
        ratios[start:start + k] = mc / mb
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(ratios, [alpha, 1 - alpha])
    return float(lo), float(hi)


def latency_verdict(ratio: float, ci: tuple[float, float] | None, max_slowdown_pct: float,
                    stable: bool) -> str:
    limit = 1 + max_slowdown_pct / 100
    lo, hi = ci if ci is not None else (ratio, ratio)
    if lo > limit:
        return REGRESSION if stable else INCONCLUSIVE
    if ratio > limit:
        return INCONCLUSIVE  # over the limit, but the interval reaches below it
    if hi < 1 / limit:
        return FASTER if stable else INCONCLUSIVE  # the same artifact twice on a busy machine
    return NO_REGRESSION


@dataclass
class LatencyRow:
    model: str
    format: str
    precision: str
    runtime: str
    device: str
    threads: int
    baseline_ms: float | None
    candidate_ms: float | None
    ratio: float
    ci: tuple[float, float] | None
    verdict: str
    baseline_run: int
    candidate_run: int
    baseline_verdict: str | None
    candidate_verdict: str | None
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.model} {self.format}/{self.precision} {self.runtime} on {self.device}, {self.threads} thread" \
            + ("s" if self.threads != 1 else "")


@dataclass
class AccuracyRow:
    model: str
    format: str
    precision: str
    dataset: str
    baseline_top1: float
    candidate_top1: float
    drop_pt: float
    se_pt: float
    verdict: str
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.model} {self.format}/{self.precision} top-1 on {self.dataset}"


@dataclass
class Comparison:
    baseline: str
    candidate: str
    max_slowdown_pct: float
    max_drop_pt: float
    confidence: float
    latency: list[LatencyRow]
    accuracy: list[AccuracyRow]
    environment: list[str]
    unmatched: dict[str, list[str]]

    @property
    def rows(self) -> list[LatencyRow | AccuracyRow]:
        return [*self.latency, *self.accuracy]

    def count(self, verdict: str) -> int:
        return sum(r.verdict == verdict for r in self.rows)

    @property
    def exit_code(self) -> int:
        return 1 if self.count(REGRESSION) else 0

    def to_dict(self) -> dict[str, Any]:
        return {"baseline": self.baseline, "candidate": self.candidate,
                "max_slowdown_pct": self.max_slowdown_pct, "max_drop_pt": self.max_drop_pt,
                "confidence": self.confidence,
                "latency": [dict(asdict(r), label=r.label) for r in self.latency],
                "accuracy": [dict(asdict(r), label=r.label) for r in self.accuracy],
                "environment": self.environment, "unmatched": self.unmatched,
                "regressions": self.count(REGRESSION), "inconclusive": self.count(INCONCLUSIVE),
                "exit_code": self.exit_code}


# ------------------------------------------------------------------------------------------------
# reading one side
# ------------------------------------------------------------------------------------------------
def device_key(run: dict) -> str:
    """How a device is named across runs: a host by its CPU, a phone or board by name and serial."""
    if run.get("device_kind") == "host":
        return f"host ({run.get('cpu_model') or '?'})"
    return f"{run.get('device')} [{run.get('device_serial')}]"


def _key(run: dict) -> tuple:
    return (run["model"], run["format"], run["precision"], run["runtime"], device_key(run), run["threads"])


def _latest_runs(store: Store, tag: str) -> dict[tuple, dict]:
    out: dict[tuple, dict] = {}
    for r in sorted(store.latest_ok_runs(threads=None, tag=tag), key=lambda r: r["run_id"]):
        out[_key(r)] = r  # the newest wins when two devices share a CPU model
    return out


def _environment(store: Store, runs: Sequence[dict]) -> dict[str, str]:
    """What the runs ran with, flattened to ``name -> value`` for a diff."""
    env: dict[str, set[str]] = {}

    def add(name: str, value: Any) -> None:
        if value not in (None, "", {}):
            env.setdefault(name, set()).add(str(value))

    ids = sorted({r["run_id"] for r in runs})
    devices = sorted({r["device_id"] for r in runs})
    for dev in (store.conn.execute(f"SELECT * FROM devices WHERE id IN ({','.join('?' * len(devices))})",
                                   devices) if devices else []):
        name = dev["name"] if dev["kind"] == "host" else f"{dev['name']} [{dev['serial']}]"
        add("device", name)
        for col in ("cpu_model", "kernel", "os_version", "governor", "soc", "abi"):
            add(col, dev[col])
        for pkg, ver in json.loads(dev["runtime_versions"] or "{}").items():
            add(f"package {pkg}", ver)
    for row in (store.conn.execute(f"SELECT runtime, runtime_version, extra FROM runs WHERE id IN "
                                   f"({','.join('?' * len(ids))})", ids) if ids else []):
        add(f"{row['runtime']} runtime", row["runtime_version"])
        extra = json.loads(row["extra"] or "{}")
        add("python", extra.get("python"))
        for tool, ver in (extra.get("tools") or {}).items():
            add(f"build tool {tool}", ver)
    return {k: ", ".join(sorted(v)) for k, v in env.items()}


def environment_changes(base: dict[str, str], cand: dict[str, str]) -> list[str]:
    out = []
    for k in sorted(set(base) | set(cand)):
        b, c = base.get(k), cand.get(k)
        if b != c:
            out.append(f"{k}: {b or '(none)'} -> {c or '(none)'}")
    return out


# ------------------------------------------------------------------------------------------------
# comparing
# ------------------------------------------------------------------------------------------------
def _artifact_notes(b: dict, c: dict) -> list[str]:
    notes = []
    for col, what in (("resolution", "resolution"), ("params", "params"), ("macs", "MACs")):
        if b.get(col) != c.get(col):
            notes.append(f"{what} {b.get(col)} -> {c.get(col)}")
    if b.get("sha256") != c.get("sha256") and not notes:
        notes.append("artifact changed (sha256)")
    return notes


def _latency_row(bs: Store, cs: Store, b: dict, c: dict, max_slowdown_pct: float, confidence: float,
                 resamples: int, seed: int) -> LatencyRow:
    bt, ct = bs.timings(b["run_id"]), cs.timings(c["run_id"])
    notes = _artifact_notes(b, c)
    ci = None
    if bt.size and ct.size:
        ratio = float(np.median(ct) / np.median(bt))
        ci = bootstrap_ratio_ci(bt, ct, confidence, resamples, seed)
        b_ms, c_ms = float(np.median(bt)) / 1e6, float(np.median(ct)) / 1e6
    else:
        stat = "median_ms" if b.get("median_ms") and c.get("median_ms") else "mean_ms"
        b_ms, c_ms = b.get(stat), c.get(stat)
        if not b_ms or not c_ms:
            raise UserError(f"runs {b['run_id']} and {c['run_id']} have no latency to compare")
        ratio = c_ms / b_ms
        notes.append(f"no raw timings: {stat[:-3]}s compared without a confidence interval")
    unstable = [f"{side} run {r['run_id']} is {r['verdict']}" for side, r in (("baseline", b), ("candidate", c))
                if r.get("verdict") not in ("stable", None)]
    verdict = latency_verdict(ratio, ci, max_slowdown_pct, stable=not unstable)
    if unstable and verdict in (INCONCLUSIVE, NO_REGRESSION, FASTER):
        notes += unstable
    if verdict == INCONCLUSIVE and not unstable:
        notes.append(f"over the {max_slowdown_pct:g} % limit, but the interval reaches below it: measure again "
                     "with more --runs")
    return LatencyRow(model=b["model"], format=b["format"], precision=b["precision"], runtime=b["runtime"],
                      device=device_key(b), threads=b["threads"], baseline_ms=b_ms, candidate_ms=c_ms,
                      ratio=ratio, ci=ci, verdict=verdict, baseline_run=b["run_id"], candidate_run=c["run_id"],
                      baseline_verdict=b.get("verdict"), candidate_verdict=c.get("verdict"), notes=notes)


def _accuracy_rows(bs: Store, cs: Store, baseline: str, candidate: str, max_drop_pt: float,
                   unmatched: dict[str, list[str]]) -> list[AccuracyRow]:
    ba, ca = bs.latest_accuracy(tag=baseline), cs.latest_accuracy(tag=candidate)
    rows = []
    for key in sorted(set(ba) & set(ca)):
        b, c = ba[key], ca[key]
        drop = 100 * (b["top1"] - c["top1"])
        se = 100 * float(np.sqrt(b["top1"] * (1 - b["top1"]) / b["n"] + c["top1"] * (1 - c["top1"]) / c["n"]))
        notes = []
        if b["dataset"] != c["dataset"] or b["n"] != c["n"]:
            notes.append(f"data differ: {b['dataset']} ({b['n']}) -> {c['dataset']} ({c['n']})")
        rows.append(AccuracyRow(model=key[0], format=key[1], precision=key[2], dataset=c["dataset"],
                                baseline_top1=100 * b["top1"], candidate_top1=100 * c["top1"], drop_pt=drop,
                                se_pt=se, verdict=REGRESSION if drop > max_drop_pt else NO_REGRESSION,
                                notes=notes))
    for side, mine, other in (("baseline", ba, ca), ("candidate", ca, ba)):
        unmatched[side] += [f"{'/'.join(k)} top-1" for k in sorted(set(mine) - set(other))]
    return rows


def compare(baseline: str, candidate: str, *, store: Store, baseline_store: Store | None = None,
            max_slowdown_pct: float = DEFAULT_MAX_SLOWDOWN_PCT, max_drop_pt: float = DEFAULT_MAX_DROP_PT,
            confidence: float = 0.95, resamples: int = RESAMPLES, seed: int = SEED) -> Comparison:
    """Compare the runs (and accuracy results) tagged ``candidate`` in ``store`` with those tagged
    ``baseline`` in ``baseline_store`` (default: the same store)."""
    bs = baseline_store or store
    base, cand = _latest_runs(bs, baseline), _latest_runs(store, candidate)
    unmatched: dict[str, list[str]] = {"baseline": [], "candidate": []}
    accuracy = _accuracy_rows(bs, store, baseline, candidate, max_drop_pt, unmatched)
    if not base and not bs.latest_accuracy(tag=baseline):
        raise UserError(f"no results tagged {baseline!r} in {bs.path} (bench --tag {baseline})")
    if not cand and not store.latest_accuracy(tag=candidate):
        raise UserError(f"no results tagged {candidate!r} in {store.path} (bench --tag {candidate})")
    keys = sorted(set(base) & set(cand), key=str)
    for side, mine, other in (("baseline", base, cand), ("candidate", cand, base)):
        unmatched[side] += [f"{k[0]} {k[1]}/{k[2]} {k[3]} on {k[4]}" for k in sorted(set(mine) - set(other), key=str)]
    if not keys and not accuracy:
        raise UserError(f"nothing to compare: no run tagged {candidate!r} matches one tagged {baseline!r} on model, "
                        "format, precision, runtime, device and threads")
    latency = [_latency_row(bs, store, base[k], cand[k], max_slowdown_pct, confidence, resamples, seed)
               for k in keys]
    env = environment_changes(_environment(bs, [base[k] for k in keys]), _environment(store, [cand[k] for k in keys]))
    return Comparison(baseline, candidate, max_slowdown_pct, max_drop_pt, confidence, latency, accuracy, env,
                      unmatched)


# ------------------------------------------------------------------------------------------------
# JUnit
# ------------------------------------------------------------------------------------------------
def junit_xml(cmp: Comparison) -> str:
    """One <testcase> per compared row: <failure> for a regression, <skipped> for inconclusive."""
    import xml.etree.ElementTree as ET

    suites = ET.Element("testsuites", name="edgeconv compare")
    suite = ET.SubElement(suites, "testsuite", name=f"edgeconv compare {cmp.baseline} -> {cmp.candidate}",
                          tests=str(len(cmp.rows)), failures=str(cmp.count(REGRESSION)), errors="0",
                          skipped=str(cmp.count(INCONCLUSIVE)))
    props = ET.SubElement(suite, "properties")
    for k, v in (("baseline", cmp.baseline), ("candidate", cmp.candidate),
                 ("max_slowdown_pct", f"{cmp.max_slowdown_pct:g}"), ("max_drop_pt", f"{cmp.max_drop_pt:g}"),
                 ("confidence", f"{cmp.confidence:g}"),
                 *((f"changed {i + 1}", e) for i, e in enumerate(cmp.environment))):
        ET.SubElement(props, "property", name=k, value=str(v))
    for r in cmp.latency:
        detail = (f"median {r.baseline_ms:.4g} -> {r.candidate_ms:.4g} ms, ratio {r.ratio:.3f}"
                  + (f" ({100 * cmp.confidence:g} % CI {r.ci[0]:.3f}-{r.ci[1]:.3f})" if r.ci else "")
                  + f"; limit +{cmp.max_slowdown_pct:g} %; runs {r.baseline_run} -> {r.candidate_run}"
                  + "".join(f"; {n}" for n in r.notes))
        _case(suite, f"edgeconv.compare.latency.{r.model}", r.label, r.verdict, detail, "LatencyRegression")
    for a in cmp.accuracy:
        detail = (f"top-1 {a.baseline_top1:.2f} -> {a.candidate_top1:.2f} % (drop {a.drop_pt:.2f} pt ± "
                  f"{1.96 * a.se_pt:.2f}, limit {cmp.max_drop_pt:g})" + "".join(f"; {n}" for n in a.notes))
        _case(suite, f"edgeconv.compare.accuracy.{a.model}", a.label, a.verdict, detail, "AccuracyDrop")
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


def _case(suite, classname: str, name: str, verdict: str, detail: str, kind: str) -> None:
    import xml.etree.ElementTree as ET

    case = ET.SubElement(suite, "testcase", classname=classname, name=name)
    if verdict == REGRESSION:
        ET.SubElement(case, "failure", message=f"{name}: {detail.split(';')[0]}", type=kind).text = detail
    elif verdict == INCONCLUSIVE:
        ET.SubElement(case, "skipped", message=f"inconclusive: {detail}")
    ET.SubElement(case, "system-out").text = f"{verdict}: {detail}"
