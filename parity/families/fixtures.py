"""``python -m parity.families.fixtures``: one ``CASE PRECISION`` line per committed reference fixture (what
``make dump-reference`` writes)."""

from parity.families import fixture_dumps

if __name__ == "__main__":
    for case, precision in fixture_dumps():
        print(case, precision)
