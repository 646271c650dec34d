"""On-demand list prices of the machine types the stacks use, in USD per node per month.

Taken on 2026-11-25 from Google's published Compute Engine price list (europe-west1, Linux,
on-demand, 730 hours a month), rounded to the dollar; they are estimates for a budget check,
not a bill. Refresh them, and the date, from https://cloud.google.com/compute/vm-instance-pricing
when the list changes. Spot capacity is estimated at SPOT_FACTOR of the on-demand price.
"""

PRICES_TAKEN = "2026-11-25"
REGION = "europe-west1"
SPOT_FACTOR = 0.35

MONTHLY_USD: dict[str, int] = {
    "e2-standard-2": 54,
    "e2-standard-4": 108,
    "e2-standard-8": 216,
    "e2-highmem-2": 73,
    "e2-highmem-4": 146,
    "n2-standard-2": 78,
    "n2-standard-4": 156,
    "n2-standard-8": 312,
    "n2-highmem-2": 105,
    "n2-highmem-4": 210,
    "n2d-standard-2": 68,
    "n2d-standard-4": 136,
    "n2d-standard-8": 272,
    "c2-standard-4": 168,
    "c2-standard-8": 336,
    "c2-standard-16": 672,
}
