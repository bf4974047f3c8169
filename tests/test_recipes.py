import pytest

from sparse_transfer._recipes import read_recipe


def test_reads_a_recipe_and_drops_its_description(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("description: what it is\nsparsity: 0.9\nepochs: 3\n")
    assert read_recipe(path, {"sparsity", "epochs"}, "tool") == {"sparsity": 0.9, "epochs": 3}


@pytest.mark.parametrize(
    "text, match",
    [
        ("sparsity: [0.9\n", "not valid YAML"),
        ("- 0.9\n- 0.95\n", "must be a mapping"),
        ("sparsity: 0.9\nsparsty: 0.95\n", r"unknown field\(s\) \['sparsty'\].*`tool --help`"),
    ],
)
def test_bad_recipes_are_clear_errors(tmp_path, text, match):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        read_recipe(path, {"sparsity"}, "tool")


def test_missing_recipe_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="No recipe file"):
        read_recipe(tmp_path / "nope.yaml", {"sparsity"}, "tool")
