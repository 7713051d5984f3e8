"""The verbs playbooks call, one module per group (``health``, ``backup`` …), and the task API
they are written against (``api``). ``api.load_task_modules`` registers every module here."""
