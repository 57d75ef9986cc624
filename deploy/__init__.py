"""One idempotent deploy of Omni to a Google Cloud project: ``python -m deploy`` (``make deploy``).

The deploy is a plan of data, ``deploy.plan.build(project, region, tag) -> list[Action]``: every
``gcloud`` and ``kubectl`` command and every Pub/Sub and Firestore Admin API call, in the order
docs/deploy.md explains, each with the check that tells it is already done. ``--dry-run`` prints
the plan without credentials or network; a real run skips what its check finds done and runs the
rest (``deploy.run``), so a second run changes nothing. tests/deploy reads the same plan beside
the manifests and checks that they agree (images and tag, identities and roles, secrets, buckets,
subscriptions, environment).

    plan.py      the Action record and the plan, step by step
    identities.py  the service accounts and the roles each one is granted, with the reason
    render.py    the manifests with PROJECT, REGION and TAG filled in (Cloud Run, kustomize)
    run.py       dry run, or the real run: checks, then subprocesses and API calls
"""
