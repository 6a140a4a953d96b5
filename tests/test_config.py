import pytest

from hpc_bliss.config import config_hash, load_config, to_yaml
from hpc_bliss.errors import ConfigError
from tests.conftest import CONFIGS


@pytest.mark.parametrize("name", ["m2", "galaxies", "smoke"])
def test_shipped_configs_load(name):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert cfg.name == name
    assert cfg.prior.image_height % cfg.prior.tile_slen == 0


def test_m2_matches_the_notebook():
    p = load_config(CONFIGS / "m2.yaml").prior
    assert (p.n_tiles_h, p.n_tiles_w, p.tile_slen) == (56, 56, 2)
    assert list(p.bands) == ["u", "g", "r", "i", "z"] and p.reference_band == 2
    assert p.max_sources == 5 and p.mean_sources == 0.48 and p.prob_galaxy == 0.0
    assert p.star_flux.min == 0.63


def test_overrides_apply_and_are_typed():
    cfg = load_config(CONFIGS / "smoke.yaml", ["prior.mean_sources=0.1", "seed=3"])
    assert cfg.prior.mean_sources == 0.1 and cfg.seed == 3


def _write(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return path


def test_unknown_key_names_key_and_file(tmp_path):
    path = _write(tmp_path, "prior:\n  mean_source: 0.3\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "prior.mean_source" in str(err.value) and str(path) in str(err.value)


def test_wrong_type_names_key_and_type(tmp_path):
    path = _write(tmp_path, "prior:\n  max_sources: many\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert "prior.max_sources" in msg and str(path) in msg and "int" in msg.lower()


def test_unknown_override_is_refused():
    with pytest.raises(ConfigError, match="prior.nope"):
        load_config(CONFIGS / "smoke.yaml", ["prior.nope=1"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(CONFIGS / "smoke.yaml", ["prior.mean_sources"])


@pytest.mark.parametrize(
    "override, key",
    [
        ("prior.tile_slen=3", "prior.image_height"),
        ("prior.max_sources=0", "prior.max_sources"),
        ("prior.star_flux.min=2e4", "prior.star_flux.max"),
        ("render.sky=[1,2]", "render.sky"),
        ("render.units=adu", "render.units"),
        ("prior.prob_galaxy=1.5", "prior.prob_galaxy"),
        ("generate.split=[0.5,0.5,0.5]", "generate.split"),
        ("generate.n_shards=0", "generate.n_shards"),
        ("generate.images_per_shard=0", "generate.images_per_shard"),
        ("generate.batch_size=-1", "generate.batch_size"),
        ("generate.io=posix", "generate.io"),
    ],
)
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_config(CONFIGS / "smoke.yaml", [override])
    assert key in str(err.value)


def test_missing_file_is_clear(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_hash_tracks_simulation_sections_only():
    a = load_config(CONFIGS / "smoke.yaml")
    b = load_config(CONFIGS / "smoke.yaml", ["train.max_epochs=9"])
    c = load_config(CONFIGS / "smoke.yaml", ["prior.mean_sources=0.25"])
    assert config_hash(a) == config_hash(b) != config_hash(c)
    assert "mean_sources: 0.2" in to_yaml(a)


def test_a_bad_value_is_blamed_on_where_it_came_from(tmp_path):
    # an override names the override, not the file it overrides
    with pytest.raises(ConfigError) as err:
        load_config(CONFIGS / "smoke.yaml", ["prior.mean_sources=-1"])
    assert str(err.value).startswith("command-line override 'prior.mean_sources=-1': ")
    assert "smoke.yaml" not in str(err.value)
    # a relation broken by an override names the override that broke it
    with pytest.raises(ConfigError, match="^command-line override 'prior.tile_slen=3': "):
        load_config(CONFIGS / "smoke.yaml", ["prior.tile_slen=3"])
    # a value from the file names the file, even when other overrides are given
    path = _write(tmp_path, "prior:\n  mean_sources: -2\n")
    with pytest.raises(ConfigError, match=f"^{path}: key 'prior.mean_sources' = -2.0"):
        load_config(path, ["seed=3"])


def test_readme_config_table_is_the_script_output():
    from tests.conftest import ROOT, script_output

    out = script_output("config_reference.py")
    assert out.strip() and out.strip() in (ROOT / "README.md").read_text()


def test_wiring_follows_by_interpolation():
    cfg = load_config(CONFIGS / "smoke.yaml", ["generate.output_dir=/d", "train.output_dir=/t"])
    assert cfg.train.data_dir == cfg.evaluate.data_dir == "/d"
    assert cfg.evaluate.checkpoint == "/t/checkpoints/best.ckpt"
    assert cfg.train.border_tiles == cfg.evaluate.border_tiles
    mine = load_config(CONFIGS / "smoke.yaml", ["generate.output_dir=/d", "train.data_dir=/x"])
    assert mine.train.data_dir == "/x" and mine.evaluate.data_dir == "/d"


def test_a_fixed_choice_lists_the_choices():
    with pytest.raises(ConfigError, match=r"render.units.*'nmgy', 'nmgy_sky', 'electrons'"):
        load_config(CONFIGS / "smoke.yaml", ["render.units=adu"])
