"""``python -m deploy --project P --region R [--tag T] [--dry-run] [--only STEP] [--json]``.

Deploys Omni to a Google Cloud project, idempotently (docs/deploy.md). ``--dry-run`` prints every
command and API call and runs none (no credentials, no network); ``--json`` prints the plan as
data instead (what tests/deploy checks); ``--only STEP`` keeps one step.
"""

from __future__ import annotations

import argparse
import json
import sys

from deploy import plan, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy", description=__doc__.splitlines()[0])
    parser.add_argument("--project", required=True)
    parser.add_argument("--region", required=True)
    parser.add_argument("--tag", help="the images' tag (default: the commit's short sha)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON, run nothing")
    parser.add_argument("--only", choices=plan.STEPS, help="run this step alone")
    parser.add_argument("--api-keys-file", help="first version of omni-api-keys (tenant:sha256)")
    parser.add_argument(
        "--webhook-secrets-file", help="first version of omni-webhook-secrets (tenant:whsec_)"
    )
    args = parser.parse_args(argv)
    tag = args.tag or plan.default_tag()
    actions = plan.build(
        args.project,
        args.region,
        tag,
        api_keys_file=args.api_keys_file,
        webhook_secrets_file=args.webhook_secrets_file,
    )
    if args.only:
        actions = [a for a in actions if a.step == args.only]
    if args.json:
        json.dump([a.to_json() for a in actions], sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    if args.dry_run:
        sys.stdout.write(f"# python -m deploy: project {args.project}, region {args.region}, ")
        sys.stdout.write(f"tag {tag}: {len(actions)} actions (dry run: nothing runs)\n")
        run.dry_run(actions, sys.stdout)
        return 0
    try:
        ran = run.execute(actions, run.Subprocesses(args.project), sys.stdout)
    except run.DeployError as exc:
        sys.stderr.write(f"deploy failed: {exc}\n")
        return 1
    sys.stdout.write(f"deployed {args.project} at tag {tag}: {len(ran)} of {len(actions)} ran\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
