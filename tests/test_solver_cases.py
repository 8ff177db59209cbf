"""The solver cases of ``tests/solver_cases.py`` cover the registry: every solver the package
registers is run by the solver tests with its own test data."""

from distributed_shampoo_dash.solvers import SOLVERS
from tests.solver_cases import CASES, ENTRY_CASES, TESTED_ENTRIES


def test_every_registry_solver_has_a_test_case() -> None:
    untested = sorted(set(SOLVERS) - set(TESTED_ENTRIES))
    assert not untested, ", ".join(
        f"add a test case for solver {name!r} in tests/solver_cases.py" for name in untested
    )
    assert [case.name for case in ENTRY_CASES] == list(SOLVERS)


def test_every_case_runs_a_registry_solver_under_its_own_name() -> None:
    assert set(TESTED_ENTRIES) <= set(SOLVERS), sorted(set(TESTED_ENTRIES) - set(SOLVERS))
    for name, case in CASES.items():
        assert case.solver is SOLVERS[case.solver.name]
        assert name == case.solver.name or name.startswith(f"{case.solver.name}_"), name
        assert set(case.options) <= set(case.solver.options), (name, sorted(case.options))
