"""What a Tune trial sees of its Ray Train run.

Train workers report at every checkpoint, but Tune checks that each result it gets carries the search
metric, and OptunaSearch learns from the results it gets. So only reports that carry a score reach
Tune: ASHA's mid-run probes, and a final evaluation made by the workers themselves. When the
evaluation is spread over the cluster instead, the trial reports the final figures itself.
"""

from __future__ import annotations

from ray.tune.integration.ray_train import TuneReportCallback


class ScoredReports(TuneReportCallback):
    def after_report(self, run_context, metrics, checkpoint):
        if "score" in metrics[0]:
            super().after_report(run_context, metrics, checkpoint)
