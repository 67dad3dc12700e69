"""``treeclip demo``: BioCLIP's findings measured, with confidence intervals, on the miniature tree of life, offline.

The demo sits above every other layer (like the CLI): `pipeline` generates a world, builds shards, trains the
mixed-text-type model and its baselines (common names only, one other single text type, untrained) at one or
more training seeds, evaluates them and exports the mixed model with a label bank; `evidence` keeps every
metric per image, `stats` bootstraps intervals over images and seeds, and `report` turns them into the findings
(PASS / not shown / FAIL), a Markdown report with plots and a JSON summary. Every step leaves a completion
marker, so re-running with the same output folder reuses what is finished.
"""

from treeclip.demo.pipeline import DemoResult, DemoSettings, StepTiming, demo_settings, run_demo

__all__ = ["DemoResult", "DemoSettings", "StepTiming", "demo_settings", "run_demo"]
