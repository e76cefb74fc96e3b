"""Whom a blob that failed verification is blamed on, and how the fetch goes on.

A blob has one digest and no piece list, so bytes that fail it name no piece. When they came
from one peer, that peer is skipped for the blob. When pieces came from several at once (a large
blob's multi-peer fetch), any one of them may have lied: skipping them all sent the node to the
origin on one liar's word and blamed the honest holders with it. So the fetch then takes the blob
whole from one holder at a time (`one_by_one`): the next failure has a single author, who alone
is skipped. In that mode a peer that stops part-way is restarted from, not resumed after, so no
attempt mixes two peers' bytes either.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from beiran.fetch.job import FetchJob

log = logging.getLogger("beiran.fetch")


def failed_verification(job: FetchJob, suspects: set[str], exc: BaseException) -> None:
    """Skip the peers whose bytes failed the blob, or, when several shared it, none of them yet:
    the fetch goes on one holder at a time."""
    who = ", ".join(sorted(s[:8] for s in suspects))
    if len(suspects) > 1 and not job.one_by_one:
        job.one_by_one = True
        log.warning("blob %s from pieces of %s failed verification (%s); taking it whole from one "
                    "holder at a time to find which", job.digest[:19], who, exc)
        return
    log.warning("blob %s from %s failed verification (%s); skipping them", job.digest[:19], who, exc)
    job.bad |= suspects
