"""Label-efficiency benchmark: drive the ``mdm_glas`` bundle over methods x protocols x label fractions x seeds.

``python -m mdm_med.benchmark --config benchmarks/glas_cpu.yaml --data-dir ../shared/data/glas --out runs/glas_cpu``
(see ``benchmarks/README.md``).
"""

from mdm_med.benchmark.report import aggregate, markdown_report, plot_dice, select_on_validation, write_report
from mdm_med.benchmark.runner import Cell, Profile, cell_run_list, load_profile, plan_cells, run_benchmark

__all__ = ["Cell", "Profile", "aggregate", "cell_run_list", "load_profile", "markdown_report", "plan_cells",
           "plot_dice", "run_benchmark", "select_on_validation", "write_report"]
