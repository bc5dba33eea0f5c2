import warnings

import pytest

from simkit.scenario import scenario_from_dict


def uniform_workload(n, rate, inp, out):
    """A synthetic workload of ``n`` Poisson arrivals at ``rate``/s with uniform (low, high) lengths."""
    return {
        "synthetic": {
            "num_requests": n,
            "arrival": {"process": "poisson", "rate": rate},
            "lengths": {
                "input": {"dist": "uniform", "low": inp[0], "high": inp[1]},
                "output": {"dist": "uniform", "low": out[0], "high": out[1]},
            },
        }
    }


def make_scenario(**over):
    """A small scenario dict with sensible defaults; keyword args replace top-level keys."""
    data = {
        "name": "test",
        "hardware": "dgx-h100",
        "model": "llama-2-7b",
        "workload": {"batch": {"num_prompts": 8, "input_tokens": 128, "output_tokens": 16}},
        "plan": {"precision": {"weights": "fp16", "activations": "fp16", "kv_cache": "fp16"}},
        "calibration": "none",
        "seed": 0,
    }
    data.update(over)
    return data


@pytest.fixture
def scenario():
    def build(**over):
        return scenario_from_dict(make_scenario(**over))

    return build


@pytest.fixture(autouse=True)
def _no_warning_noise():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


@pytest.fixture(autouse=True, scope="session")
def _private_table_cache(tmp_path_factory):
    """Cost tables cached by the tests go to a temporary folder, never the user's cache."""
    import os

    old = os.environ.get("SIMKIT_CACHE_DIR")
    os.environ["SIMKIT_CACHE_DIR"] = str(tmp_path_factory.mktemp("simkit-cache"))
    yield
    if old is None:
        os.environ.pop("SIMKIT_CACHE_DIR", None)
    else:
        os.environ["SIMKIT_CACHE_DIR"] = old
