"""What a Tune trial sees of its Ray Train run while it trains.

Train workers report at every checkpoint; with ASHA on, those reports carry a cheap probe score, and
ASHA needs them to stop weak trials early. The trial reports its final, evaluated result itself
(`drivers/tune._trial`), so only the mid-run reports are forwarded here.
"""

from __future__ import annotations

from ray.tune.integration.ray_train import TuneReportCallback

from safemax_ray.engine.outcome import STATUS, Status


class MidRunProbes(TuneReportCallback):
    def after_report(self, run_context, metrics, checkpoint):
        if metrics[0].get(STATUS) == Status.RUNNING.value:
            super().after_report(run_context, metrics, checkpoint)
