"""Run one task function in a process of its own, to measure its memory alone.

    python tests/task_child.py TASK_TYPE PAYLOAD_FILE STORAGE_URL JOB_ID

prints JSON: ``result`` (the task's result, text), ``before_kib`` (VmHWM once
the task type and the storage client are loaded and connected) and ``peak_kib``
(VmHWM at the end), so ``peak - before`` is what running the task itself took.
The storage's endpoint and credentials come from the environment, as a
worker's do.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from assembly_child import _peak_kib

from fractalq.storage import shared_storage
from fractalq.tasks import TaskContext, get


def main() -> None:
    task_type, payload_file, storage_url, job_id = sys.argv[1:]
    task = get(task_type)
    payload = Path(payload_file).read_bytes()
    task.check(payload)
    shared_storage(storage_url).check()  # clients made and connected before measuring
    before = _peak_kib()
    result = task.run(payload, TaskContext(storage_url=storage_url, job_id=job_id))
    print(json.dumps({"result": result.decode(), "before_kib": before, "peak_kib": _peak_kib()}))


if __name__ == "__main__":
    main()
