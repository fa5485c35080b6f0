import pytest

from hoi_factory.optional import MissingDependency, require


def test_a_missing_optional_package_says_which_extra_installs_it():
    with pytest.raises(MissingDependency) as error:
        require("gsplat_that_is_not_installed.rasterization", "gpu", "The CUDA Gaussian renderer")
    message = str(error.value)
    assert "The CUDA Gaussian renderer needs the Python package 'gsplat_that_is_not_installed'" in message
    assert "pip install 'hoi-factory[gpu]'" in message


def test_an_installed_package_is_returned():
    assert require("pyarrow.parquet", "core", "Parquet").__name__ == "pyarrow.parquet"
