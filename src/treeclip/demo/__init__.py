"""``treeclip demo``: BioCLIP's findings reproduced, measured, on the miniature tree of life, offline in minutes.

The demo sits above every other layer (like the CLI): `pipeline` generates a world, builds shards, trains the
mixed-text-type model and its baselines (common names only, one other single text type, untrained),
evaluates them and exports the mixed model with a label bank; `report` turns the results into the findings
(each with pass/fail), a Markdown report with t-SNE plots and a JSON summary. Every step leaves a completion
marker, so re-running with the same output folder reuses what is finished.
"""

from treeclip.demo.pipeline import DemoResult, DemoSettings, StepTiming, demo_settings, run_demo

__all__ = ["DemoResult", "DemoSettings", "StepTiming", "demo_settings", "run_demo"]
