"""common/googleapi.py's run_transaction against the real Firestore emulator."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from google.cloud import firestore

from common.googleapi import Missing, PreconditionFailed, run_transaction, translated


class Down(RuntimeError):
    pass


@pytest.fixture
def client(clean_firestore: object) -> firestore.Client:
    return firestore.Client()


def test_a_transaction_reads_decides_and_writes(client: firestore.Client) -> None:
    ref = client.collection("googleapi").document("counter")
    ref.set({"n": 1})

    def bump(transaction: firestore.Transaction) -> int:
        n: int = ref.get(transaction=transaction).get("n")
        transaction.update(ref, {"n": n + 1})
        return n + 1

    assert run_transaction(client, bump, unavailable=Down, what="bump") == 2
    assert (ref.get().to_dict() or {})["n"] == 2


def test_the_functions_own_exception_passes_and_nothing_is_written(
    client: firestore.Client,
) -> None:
    ref = client.collection("googleapi").document("refused")
    ref.set({"n": 1})

    class Finished(Exception):
        pass

    def refuse(transaction: firestore.Transaction) -> None:
        ref.get(transaction=transaction)
        transaction.update(ref, {"n": 99})
        raise Finished()

    with pytest.raises(Finished):
        run_transaction(client, refuse, unavailable=Down, what="refuse")
    assert (ref.get().to_dict() or {})["n"] == 1


def test_racing_transactions_all_land_exactly_once(client: firestore.Client) -> None:
    """Eight threads bump one counter: under the one policy, each bump lands once."""
    ref = client.collection("googleapi").document("raced")
    ref.set({"n": 0})

    def bump(transaction: firestore.Transaction) -> None:
        n: int = ref.get(transaction=transaction).get("n")
        transaction.update(ref, {"n": n + 1})

    def run(_: int) -> bool:
        """Whether the bump landed; contended past its tries is counted, not lost silently."""
        try:
            run_transaction(firestore.Client(), bump, unavailable=Down, what="bump")
        except Down:
            return False
        return True

    with ThreadPoolExecutor(max_workers=8) as pool:
        landed = list(pool.map(run, range(8), timeout=120))
    assert sum(landed) >= 1
    assert (ref.get().to_dict() or {})["n"] == sum(landed)


def test_final_errors_from_the_emulator_are_ours(client: firestore.Client) -> None:
    ref = client.collection("googleapi").document("absent")
    with pytest.raises(Missing), translated(Down, "update"):
        ref.update({"n": 1})
    ref.set({"n": 1})
    stale: Any = ref.get().update_time
    ref.update({"n": 2})
    with pytest.raises(PreconditionFailed), translated(Down, "update"):
        ref.update({"n": 3}, option=client.write_option(last_update_time=stale))
