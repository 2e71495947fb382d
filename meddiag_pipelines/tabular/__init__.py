"""Tabular tasks (patient records): readers of landed tables, the feature plan, XGBoost and the baseline."""
