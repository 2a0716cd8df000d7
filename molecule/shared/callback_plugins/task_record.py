"""Ansible callback: where ANSIBLE_TASK_RECORD names a file, one JSON line per task result.

Each line: host, path (the task's file and line), name, action, include (an include or import
of tasks or a role) and status (ok, changed, skipped, failed, unreachable). The verify tests
(verify_helpers.run_recording_tasks) and the upgrade rehearsal read it to tell which of a
role's task files a run reached and ran, which the printed output cannot say reliably.

It is found through ANSIBLE_CALLBACK_PLUGINS and loads without being enabled
(CALLBACK_NEEDS_ENABLED = False); without ANSIBLE_TASK_RECORD it writes nothing.
"""

from __future__ import annotations

import json
import os

from ansible.playbook.task_include import TaskInclude
from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: task_record
type: notification
short_description: one JSON line per task result, in the file ANSIBLE_TASK_RECORD names
description:
  - Appends host, task path, name, action and status of each task result to a file, for tests.
"""

RECORD_VARIABLE = "ANSIBLE_TASK_RECORD"


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "notification"
    CALLBACK_NAME = "task_record"
    CALLBACK_NEEDS_ENABLED = False

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.record = os.environ.get(RECORD_VARIABLE, "")
        self.disabled = not self.record

    def _write(self, result, status: str) -> None:
        task = result.task
        line = {
            "host": result.host.get_name(),
            "path": task.get_path() or "",
            "name": task.get_name(),
            "action": task.action,
            "include": isinstance(task, TaskInclude),
            "status": status,
        }
        with open(self.record, "a", encoding="utf-8") as out:
            out.write(json.dumps(line) + "\n")

    def v2_runner_on_ok(self, result) -> None:
        self._write(result, "changed" if result.result.get("changed") else "ok")

    def v2_runner_on_skipped(self, result) -> None:
        self._write(result, "skipped")

    def v2_runner_on_failed(self, result, ignore_errors=False) -> None:
        self._write(result, "failed")

    def v2_runner_on_unreachable(self, result) -> None:
        self._write(result, "unreachable")
