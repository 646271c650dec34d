"""The data tier outside the cluster: backup buckets."""

from __future__ import annotations

from pulumi_policy import (
    EnforcementLevel,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
)

from policies.rules.kube import dig

BUCKET = "gcp:storage/bucket:Bucket"


def _bucket(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type != BUCKET:
        return
    if dig(args.props, "uniformBucketLevelAccess") is not True:
        report("bucket must use uniform bucket-level access (no per-object ACLs)", None)
    if dig(args.props, "publicAccessPrevention") != "enforced":
        report("bucket must enforce public access prevention", None)


buckets_private = ResourceValidationPolicy(
    name="buckets-private",
    description="Storage buckets (backups) use uniform access and enforce public access "
    "prevention.",
    enforcement_level=EnforcementLevel.MANDATORY,
    validate=_bucket,
)

POLICIES = [buckets_private]
