"""Fixtures the flows' tests share."""
import pytest


@pytest.fixture(scope="session")
def tiny_folder_run(tmp_path_factory):
    """One tiny trained folder run (study_test.tiny_run) for the study and the CRF search, which each write only their
    own outputs into it: (config, root, manual_dir), the run in root / "run"."""
    from study_test import tiny_run

    root = tmp_path_factory.mktemp("tiny_run")
    config, manual_dir = tiny_run(root)
    return config, root, manual_dir
