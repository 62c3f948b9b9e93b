"""The synthesis pipeline's quality gate: FID/KID against held-out real data, with a limit.

:func:`fid_gate_step` (pipeline step ``fid_gate``) is ``udl-med fid REAL FAKE`` with
bootstrap intervals, and fails the pipeline with one clear line when FID is above
``max_fid``, so that a generator that has not learned the data never feeds the
memorisation and utility steps.
"""

from __future__ import annotations

import logging
from typing import Any

from udl_med.errors import UserError
from udl_med.evaluation.compare import compare_sets

log = logging.getLogger(__name__)


class QualityGateError(UserError):
    """The synthetic data set is further from the real data than the configured gate allows."""


def fid_gate_step(
    real: str,
    fake: str,
    max_fid: float | None = None,
    extractor: str = "random",
    dims: str = "2",
    bootstrap: int = 100,
    seed: int = 0,
) -> dict[str, Any]:
    """FID and KID of FAKE against REAL with 95% bootstrap intervals; fail above ``max_fid``.

    Returns:
        what :func:`udl_med.evaluation.compare.compare_sets` returns, plus ``max_fid`` and
        ``passed``.

    Raises:
        QualityGateError: ``fid > max_fid``; the message gives FID, its interval and the gate.
    """
    max_fid = None if max_fid is None else float(max_fid)  # YAML reads 1e9 as a string
    result = compare_sets(real, fake, extractor=extractor, dims=str(dims), bootstrap=int(bootstrap), seed=int(seed))
    passed = max_fid is None or result["fid"] <= max_fid
    if not passed:
        low, high = result.get("fid_ci_low"), result.get("fid_ci_high")
        ci = f"{low:.3g}-{high:.3g}" if low is not None and high is not None else "n/a"
        raise QualityGateError(
            f"FID {result['fid']:.3g} (95% CI {ci}, extractor {result['extractor']}) "
            f"of {fake} against {real} is above the gate max_fid={max_fid:g}: the generator is not good enough to synthesize from; "
            "train longer, or raise steps.<name>.with.max_fid"
        )
    log.info("FID gate: %.3g <= %s", result["fid"], max_fid)
    return {**result, "max_fid": max_fid, "passed": passed}
