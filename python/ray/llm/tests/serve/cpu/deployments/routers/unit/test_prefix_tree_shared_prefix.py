"""Unit tests for ``PrefixTree._shared_prefix_count`` (patched to C speed).

The patched count must give exactly what ``os.path.commonprefix`` gave, and the
tree built on it must answer as before. No Ray cluster is started.
"""

import os
import random
import sys

import pytest

from ray.llm._internal.serve.routing_policies.prefix_aware.prefix_tree import (
    PrefixTree,
)

count = PrefixTree._shared_prefix_count


def reference(a: str, b: str) -> int:
    return len(os.path.commonprefix([a, b]))


@pytest.mark.parametrize(
    "a,b,expected",
    [
        ("", "", 0),
        ("", "abc", 0),
        ("abc", "", 0),
        ("abc", "abc", 3),
        ("abc", "abd", 2),
        ("abc", "abcdef", 3),
        ("abcdef", "abc", 3),
        ("xbc", "abc", 0),
        ("héllo wörld", "héllo world", 7),
        ("a" * 4096 + "x", "a" * 4096 + "y", 4096),
        ("a" * 4095 + "x" + "a", "a" * 4096 + "a", 4095),
    ],
)
def test_known_pairs(a, b, expected):
    assert count(a, b) == expected
    assert count(b, a) == expected
    assert reference(a, b) == expected


def test_matches_commonprefix_on_random_strings():
    rng = random.Random(60359)
    for _ in range(20_000):
        shared = "".join(rng.choice("ab") for _ in range(rng.randint(0, 40)))
        a = shared + "".join(rng.choice("ab") for _ in range(rng.randint(0, 8)))
        b = shared + "".join(rng.choice("ab") for _ in range(rng.randint(0, 8)))
        assert count(a, b) == reference(a, b), (a, b)


def test_tree_matches_as_before_on_long_prompts():
    """Inserts and matches on long shared prefixes, checked by brute force."""
    rng = random.Random(7)
    prefixes = ["".join(rng.choice("abcd") for _ in range(2000)) for _ in range(4)]
    tree = PrefixTree()
    inserted = {}
    for i in range(200):
        tenant = f"t{i % 3}"
        tree.add_tenants([tenant], 0)
        text = (
            rng.choice(prefixes) + str(i) + "".join(rng.choice("ab") for _ in range(20))
        )
        tree.insert(text, tenant, i)
        inserted.setdefault(tenant, []).append(text)
    for _ in range(100):
        query = rng.choice(prefixes) + "".join(rng.choice("ab0123") for _ in range(30))
        matched, tenants = tree.prefix_match(query)
        best = max(reference(query, t) for texts in inserted.values() for t in texts)
        assert len(matched) == best
        assert query.startswith(matched)
        assert tenants and all(
            any(reference(query, t) == best for t in inserted[tenant])
            for tenant in tenants
        )


if __name__ == "__main__":
    sys.exit(pytest.main(["-v", "-s", __file__]))
