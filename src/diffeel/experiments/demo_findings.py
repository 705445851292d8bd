"""The paper's directions, checked on the demo with their uncertainty.

Each finding compares two methods (or one method on two groups of test frames) and gets a
verdict from a 95 % interval of the difference over training seeds *and* test images
(:func:`~diffeel.metrics.bootstrap.paired_difference`: a paired bootstrap over the test frames,
widened by Student's t interval over the training seeds):

- ``holds``: the whole interval is on the claimed side (past the claimed margin);
- ``within noise``: the interval straddles it — another seed or another test set could go
  either way;
- ``DOES NOT HOLD``: the whole interval is on the other side.

A finding with several parts (``EEL ≥ energy ≥ MSP``) holds when every part holds and does not
hold when any part does not. Parts whose recipes this run did not train are left out (a finding
with none is not reported): not measured is not failed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..metrics.bootstrap import BootstrapAccumulator, paired_difference

HOLDS, WITHIN_NOISE, DOES_NOT_HOLD = "holds", "within noise", "DOES NOT HOLD"
MAIN_METHODS = ("closed/msp", "closed/energy", "rpl/energy", "rpl+eel/eel")
POOL_RUNS = ("rpl+eel pool 25%", "rpl+eel pool 50%", "rpl+eel")  # 25 / 50 / 100 % of the object bank
RESAMPLES = 1000
CONFIDENCE = 0.95
HARD_SHARE = 0.25  # Figure 7: the hardest quarter of inlier and of anomaly pixels


def _tail_mean(values: np.ndarray, counts: np.ndarray, share: float, upper: bool) -> np.ndarray:
    """Per row: the mean value of the lowest (or highest) ``share`` of the counted pixels, the
    boundary value counted in part."""
    if upper:
        values, counts = values[::-1], counts[:, ::-1]
    wanted = share * counts.sum(axis=1, keepdims=True)
    before = np.cumsum(counts, axis=1) - counts
    taken = np.clip(wanted - before, 0, counts)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (taken @ values) / wanted[:, 0]


def hard_pixel_energies(values: np.ndarray, inliers: np.ndarray, anomalies: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Figure 7's two bars from an energy-score histogram (score ``-E``, ``E = logsumexp``): the
    mean energy response of the lowest-energy quarter of inlier pixels and of the highest-energy
    quarter of anomaly pixels."""
    hard_inliers = -_tail_mean(values, inliers, HARD_SHARE, upper=True)  # highest score = lowest E
    hard_anomalies = -_tail_mean(values, anomalies, HARD_SHARE, upper=False)
    return hard_inliers, hard_anomalies


def energy_gap(values: np.ndarray, inliers: np.ndarray, anomalies: np.ndarray) -> np.ndarray:
    """Figure 7's gap: hard inliers' mean energy minus hard anomalies' (larger = better separated)."""
    hard_inliers, hard_anomalies = hard_pixel_energies(values, inliers, anomalies)
    return hard_inliers - hard_anomalies


@dataclass(frozen=True)
class Part:
    """``a`` on ``group_a`` beats ``b`` on ``group_b`` by more than ``margin`` in AUPRC (or, with
    ``statistic``, in that statistic of the pooled pixels)."""

    a: str
    b: str
    group_a: str = "whole"
    group_b: str = "whole"
    margin: float = 0.0
    statistic: object = None

    @property
    def methods(self) -> tuple[str, str]:
        return self.a, self.b


CHECKS = (
    ("rpl+eel/eel beats closed/msp by at least 5 AUPRC points (whole test set)", (Part("rpl+eel/eel", "closed/msp", margin=0.05),)),
    ("closed/msp is better in clear than in adverse weather", (Part("closed/msp", "closed/msp", "clear", "adverse"),)),
    ("EEL score ≥ energy ≥ MSP (rpl+eel model)", (Part("rpl+eel/eel", "rpl+eel/energy"), Part("rpl+eel/energy", "rpl+eel/msp"))),
    ("RPL + DiffEEL (EEL loss and score, diffeel's data) beats RPL as published (its loss, mixing and energy score)",
     (Part("rpl+eel/eel", "rpl/energy"),)),
    ("EEL loss ≥ RPL loss (same data, same EEL score)", (Part("rpl+eel/eel", "rpl-loss/eel"),)),
    ("EEL loss ≥ RPL loss (same data, same energy score)", (Part("rpl+eel/energy", "rpl-loss/energy"),)),
    ("diffeel's placement beats RPL's random paste (RPL loss, energy score)", (Part("rpl-loss/energy", "rpl/energy"),)),
    ("adverse weather degrades every main method", tuple(Part(m, m, "clear", "adverse") for m in MAIN_METHODS)),
    ("EEL loss widens the energy gap between hard inliers and hard anomalies (Figure 7; same data)",
     (Part("rpl+eel/energy", "rpl-loss/energy", statistic=energy_gap),)),
    ("more synthesized objects help (Table V: 25 % ≤ 50 % ≤ 100 % of the object pool)",
     (Part(f"{POOL_RUNS[1]}/eel", f"{POOL_RUNS[0]}/eel"), Part(f"{POOL_RUNS[2]}/eel", f"{POOL_RUNS[1]}/eel"))),
    ("three pasted objects per image help (rpl+eel; objects per image, not the pool size)", (Part("rpl+eel k=3/eel", "rpl+eel/eel"),)),
)

# The methods whose test frames are kept per image for the intervals (the others are reported only).
COMPARED_METHODS = tuple(sorted({method for _, parts in CHECKS for part in parts for method in part.methods}))


def verdict(low: float, high: float) -> str:
    if low > 0:
        return HOLDS
    if high < 0:
        return DOES_NOT_HOLD
    return WITHIN_NOISE  # includes an undefined (NaN) interval


def combined_verdict(verdicts: list[str]) -> str:
    if all(v == HOLDS for v in verdicts):
        return HOLDS
    return DOES_NOT_HOLD if DOES_NOT_HOLD in verdicts else WITHIN_NOISE


def grouped(by_weather: dict[str, BootstrapAccumulator], weathers) -> BootstrapAccumulator:
    """One accumulator over the frames of several weathers (each frame id appears in one)."""
    total = BootstrapAccumulator()
    for weather in weathers:
        if weather in by_weather:
            total.merge(by_weather[weather])
    return total


def findings(results: dict, accumulators: list[dict], n_resamples: int = RESAMPLES, seed: int = 0) -> list[dict]:
    """Every check whose recipes this run trained, with its parts' intervals and its verdict.

    ``accumulators[s][method][group]`` holds the test frames of ``group`` (``whole``, ``clear``,
    ``adverse``) scored by ``method``'s model of training seed ``s``; ``results["methods"]`` holds
    the exact metrics averaged over seeds (shown as evidence beside the intervals).
    """
    reported = []
    for claim, parts in CHECKS:
        parts = [p for p in parts if all(m in accumulators[0] for m in p.methods)]
        if not parts:
            continue
        measured = []
        for part in parts:
            runs = [[seed_runs[method][group] for seed_runs in accumulators]
                    for method, group in ((part.a, part.group_a), (part.b, part.group_b))]
            result = paired_difference(*runs, part.statistic or "auprc", n_resamples=n_resamples, seed=seed, confidence=CONFIDENCE)
            low, high = result["low"] - part.margin, result["high"] - part.margin
            measured.append({"a": part.a, "group_a": part.group_a, "b": part.b, "group_b": part.group_b, "margin": part.margin,
                             "statistic": "energy_gap" if part.statistic else "auprc", "difference": result["difference"],
                             "low": result["low"], "high": result["high"], "verdict": verdict(low, high),
                             "values": _values(results, part)})
        overall = combined_verdict([m["verdict"] for m in measured])
        reported.append({"claim": claim, "verdict": overall, "holds": overall == HOLDS, "parts": measured,
                         "evidence": "; ".join(_evidence(m) for m in measured)})
    return reported


def _values(results: dict, part: Part) -> list[float]:
    """The two compared values averaged over seeds: exact AUPRC, or the energy gap."""
    if part.statistic:
        gaps = results["energy_gap"]
        return [gaps[method.rsplit("/", 1)[0]]["gap"] for method in part.methods]
    return [results["methods"][method][group]["auprc"] for method, group in ((part.a, part.group_a), (part.b, part.group_b))]


def _evidence(part: dict) -> str:
    """``A 31.74 vs B 20.06: +11.68 [+8.10, +15.20]`` (AUPRC in points, the gap in energy units)."""
    scale = 1 if part["statistic"] == "energy_gap" else 100  # the gap is an energy, not a percentage
    if part["a"] == part["b"]:
        names = [f"{part['a']}: {part['group_a']}", part["group_b"]]
    else:
        names = [method if group == "whole" else f"{method} {group}" for method, group in ((part["a"], part["group_a"]), (part["b"], part["group_b"]))]
    a, b = (scale * value for value in part["values"])
    margin = f", {scale * part['margin']:g} needed" if part["margin"] else ""
    return (f"{names[0]} {a:.2f} vs {names[1]} {b:.2f}: {scale * part['difference']:+.2f} "
            f"[{scale * part['low']:+.2f}, {scale * part['high']:+.2f}]{margin}")
