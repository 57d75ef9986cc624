"""The official Google Cloud emulators for local runs and tests, and the local stack around them.

- ``process``: start one emulator in its own process group, wait until it answers, stop the group.
- ``reset``: wipe an emulator's data between tests.
- ``provision``: create the topic and subscriptions, idempotently, on an emulator or a real project.
- ``supervisor`` and ``localrun``: what ``make run`` runs.
"""
