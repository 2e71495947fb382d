"""Child side of :func:`bench.measure`: run one function, report its result and this process's peak RSS."""

import importlib
import json
import sys
import traceback

from bench import peak_rss_mb

if __name__ == "__main__":
    module, function = sys.argv[1].split(":")
    kwargs = json.loads(sys.argv[2])
    try:
        result = getattr(importlib.import_module(module), function)(**kwargs)
        out = {"ok": True, **(result or {})}
    except MemoryError:
        out = {"ok": False, "error": "MemoryError"}
    except Exception as exc:  # reported, not raised: the parent prints one line per measurement
        out = {"ok": False, "error": f"{type(exc).__name__}: {str(exc)[:400]}", "trace": traceback.format_exc()[-800:]}
    out["peak_rss_mb"] = round(peak_rss_mb(), 1)
    print(json.dumps({"__bench__": True, **out}, default=str), flush=True)
