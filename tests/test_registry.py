"""edgecnn.registry: one registry shape for models, providers, output formats, strategies, variants,
rewrites and datasets. An unknown name is one SettingError that names the setting and every known name."""

from __future__ import annotations

import pytest

from edgecnn.errors import SettingError
from edgecnn.registry import Registry


def _colours() -> Registry:
    colours = Registry("colour")
    colours.add("red", 1)
    colours.add("green", 2)
    colours.add("blue", 3)
    return colours


def test_entries_come_back_by_name_and_in_registration_order():
    colours = _colours()
    assert colours["green"] == 2
    assert colours.names() == ("red", "green", "blue")
    assert list(colours) == ["red", "green", "blue"]
    assert list(colours.items()) == [("red", 1), ("green", 2), ("blue", 3)]
    assert len(colours) == 3 and "blue" in colours and "pink" not in colours


def test_the_register_decorator_adds_the_function_and_returns_it_unchanged():
    writers = Registry("format")

    @writers.register("upper")
    def upper(text):
        return text.upper()

    assert writers["upper"] is upper and upper("a") == "A"


def test_an_unknown_name_is_a_setting_error_naming_the_setting_the_value_and_every_known_name():
    with pytest.raises(SettingError) as caught:
        _colours()["pink"]
    assert str(caught.value) == "colour pink: expected one of red, green, blue"
    assert (caught.value.setting, caught.value.value) == ("colour", "pink")
    # the command line puts the flag that set it in front instead (edgecnn.cli.user_errors)
    assert caught.value.message("--colour") == "--colour pink: expected one of red, green, blue"


def test_two_names_read_as_a_or_b_and_the_message_can_say_more():
    files = Registry("output", what="a file ending in", note=" (the extension picks the writer)")
    files.add(".jsonl", "lines")
    files.add(".parquet", "columns")
    with pytest.raises(SettingError, match=r"^output rows\.csv: expected a file ending in \.jsonl or \.parquet "):
        raise files.unknown("rows.csv")


def test_a_value_that_is_not_a_name_at_all_is_the_same_one_line_error():
    colours = _colours()
    with pytest.raises(SettingError, match=r"^colour \['red'\]: expected one of red, green, blue$"):
        colours[["red"]]
    assert ["red"] not in colours and colours.get(["red"]) is None


def test_get_answers_none_or_the_default_for_an_unknown_name():
    colours = _colours()
    assert colours.get("green") == 2
    assert colours.get("pink") is None and colours.get("pink", 0) == 0


def test_registering_a_name_twice_is_refused_and_keeps_the_first_entry():
    colours = _colours()
    with pytest.raises(ValueError, match="colour 'red' is registered twice"):
        colours.add("red", 99)
    with pytest.raises(ValueError, match="registered twice"):
        colours["red"] = 99
    assert colours["red"] == 1


def test_a_test_can_add_an_entry_for_a_while(monkeypatch):
    colours = _colours()
    with monkeypatch.context() as patch:
        patch.setitem(colours, "pink", 4)
        assert colours.names() == ("red", "green", "blue", "pink")
    assert colours.names() == ("red", "green", "blue")


# -- every registry in edgecnn has this shape -------------------------------------------------
def _registries():
    from edgecnn.builtin_datasets import DATASETS
    from edgecnn.distribute import STRATEGIES
    from edgecnn.models import ARCHITECTURES
    from edgecnn.predict import OUTPUT_FORMATS
    from edgecnn.providers import PROVIDERS
    from edgecnn.provider_rewrites import REWRITES
    from edgecnn.row_files import OUTPUT_WRITERS
    from edgecnn.variants import VARIANTS

    return {
        "model": ARCHITECTURES,
        "device": PROVIDERS,
        "format": OUTPUT_FORMATS,
        "output": OUTPUT_WRITERS,
        "distribute": STRATEGIES,
        "quantize": VARIANTS,
        "rewrite": REWRITES,
        "dataset": DATASETS,
    }


@pytest.mark.parametrize("setting", list(_registries()))
def test_every_edgecnn_registry_names_its_setting_and_lists_its_entries_for_an_unknown_name(setting):
    registry = _registries()[setting]
    assert isinstance(registry, Registry) and registry.setting == setting and len(registry) >= 2
    with pytest.raises(SettingError) as caught:
        registry["no-such-entry"]
    message = str(caught.value)
    assert message.startswith(f"{setting} no-such-entry: expected ") and "\n" not in message
    assert all(name in message for name in registry.names())


def test_the_library_names_settings_and_leaves_flags_to_the_command_line():
    from edgecnn.distribute import distribution
    from edgecnn.models import ModelSpec, build_model
    from edgecnn.predict import write_output
    from edgecnn.providers import parse_device
    from edgecnn.row_files import output_writer
    from edgecnn.variants import chosen_variants

    cases = [
        (lambda: build_model(ModelSpec("vgg99", (16, 16), 1, 3)), "model vgg99: expected one of cnn, resnet50"),
        (lambda: parse_device("npu:1"), "device npu:1: expected one of cpu, cuda, tensorrt, openvino or auto"),
        (lambda: write_output(None, "xml", None), "format xml: expected one of table, json, csv"),
        (lambda: output_writer("rows.csv"), "output rows.csv: expected a file ending in one of .jsonl"),
        (lambda: distribution("ring"), "distribute ring: expected one of none, mirrored, multiworker"),
        (lambda: chosen_variants(["int4"]), "quantize int4: expected one of fp32, int8, fp16, auto"),
    ]
    for call, start in cases:
        with pytest.raises(SettingError) as caught:
            call()
        assert str(caught.value).startswith(start)
        assert "--" not in str(caught.value)


def test_each_rewrite_and_variant_is_registered_under_its_own_name():
    from edgecnn.provider_rewrites import REWRITES
    from edgecnn.variants import VARIANTS

    assert all(rewrite.key == key for key, rewrite in REWRITES.items())
    assert all(variant.name == name for name, variant in VARIANTS.items())
