"""The accuracy table (the paper's Table 1) from the stages' metrics files. Imports torch only
to read the supervised checkpoints, never timm."""
import json
from pathlib import Path

import pandas as pd

from vitlandscape.storage import checkpoints


def accuracy_table(metric_files, supervised_checkpoints, out) -> pd.DataFrame:
    """One row per model: linear-probe, fine-tune and supervised top-1 (the paper's Table 1),
    from the stages' metrics files and from the supervised models the workflow trained."""
    rows = {}
    for path in metric_files:
        m = json.loads(Path(path).read_text())
        row = rows.setdefault(m["model"], {"model": m["model"], "method": m["method"]})
        if m["stage"] == "probe":
            row["linear_probe_top1"] = m["test_top1"]
            # absent for a given probe checkpoint: no probe was trained on a random encoder
            row["probe_random_init_top1"] = m.get("random_init_test_top1")
        else:
            row[{"finetune": "finetune_top1", "supervised": "supervised_top1"}[m["stage"]]] = m["test_top1"]
    for name, path in supervised_checkpoints.items():
        ckpt = checkpoints.load(path)
        rows[name] = {"model": name, "method": "supervised", "supervised_top1": ckpt["test_top1"]}
    columns = ["model", "method", "linear_probe_top1", "finetune_top1", "supervised_top1",
               "probe_random_init_top1"]
    table = pd.DataFrame(list(rows.values()), columns=columns)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False, float_format="%.4f")
    print(table.to_string(index=False))
    return table
