"""Run every validation script in phantoms/ and print one summary line each; exit 1 if any failed.

    python phantoms/validate_all.py [--quick]
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    scripts = sorted(p for p in HERE.glob("validate_*.py") if p.name != "validate_all.py")
    failed = 0
    print(f"{'script':28s} {'status':8s} {'seconds':>8s}  last line")
    for script in scripts:
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True)
        out = [ln for ln in proc.stdout.splitlines() if ln.strip()]
        err = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        # the summary line, or where the script stopped without one: its last error line (one line, not a traceback)
        last = out[-1] if out and out[-1].startswith(("PASSED", "FAILED")) else (err or out or ["no output"])[-1]
        status = "PASS" if proc.returncode == 0 else "FAIL"
        failed += proc.returncode != 0
        print(f"{script.name:28s} {status:8s} {time.perf_counter() - t:8.1f}  {last}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
