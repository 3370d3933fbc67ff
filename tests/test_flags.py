"""Every numeric flag of train.py and eval.py at its smallest valid value, on a tiny run of the toy world:
the run finishes, or is refused in one line (`error: ...`, exit 2) before any model is loaded, and then
leaves nothing behind. The smallest valid value is where bugs hide (`--eval-samples 1` once ended a run
with a KeyError after its base evaluation; a temperature of 1e-40 with an IndexError).

The flags come from the parsers themselves (launch/cli.build_parser: train.py's and launch/'s; eval.build_parser): a new numeric flag is
covered as soon as it exists. Each is tried, in order, at -1, 0 and 1 (an integer) or at -1, 0, the
smallest positive float (5e-324) and the smallest temperature the flags take (1e-6, MIN_TEMPERATURE)
(a float), until a value runs to the end: every value before it must be refused in one line, before any
work. So a flag with no lower bound (--seed) runs at -1, one that must be positive at 1, a float that
must be above 0 at 5e-324, a temperature at 0 (greedy) or 1e-6. A flag refused at every value tried
(--max-len 1: no prompt fits) passes if every refusal is one line before any work.
"""
import math

import pytest

import eval as E
import train as T
from launch import cli
from model import MIN_TEMPERATURE

TRIES = {int: (-1, 0, 1), float: (-1.0, 0.0, math.ulp(0.0), MIN_TEMPERATURE)}

# A tiny toy run: 2 training questions, 1 held-out question (greedy and one sampled answer), 6 new tokens,
# one step. The flag under test comes after these, so it overrides them.
TRAIN = ["--prefix-len", "2", "--limit", "2", "--eval-limit", "1", "--max-new-tokens", "6", "--eval-max-new-tokens",
         "6", "--epochs", "1", "--batch-size", "2", "--micro-batch-size", "2", "--eval-samples", "1"]
# flags that do something only next to another one
TRAIN_WITH = {"--eval-subset": ["--eval-every", "1"]}
EVAL_WITH = {"--num-samples": ["--analysis", "error-position", "--rollouts", "1"],
             "--rollouts": ["--analysis", "error-position", "--num-samples", "2"]}


def numeric_flags(parser):
    return [a.option_strings[-1] for a in parser._actions if a.option_strings and a.type in (int, float)]


def _value(v):
    return repr(v) if isinstance(v, float) else str(v)


def _smallest_valid(main, module, flag, kind, argv_for, out, monkeypatch, capsys):
    """Try the flag's values in order (TRIES) until one runs to the end, the k-th with the output `out`k;
    returns (the values tried, whether the last finished)."""
    loads = []
    real = module.Transformer.from_pretrained
    monkeypatch.setattr(module.Transformer, "from_pretrained", lambda *a, **kw: loads.append(1) or real(*a, **kw))
    tried = []
    for v in TRIES[kind]:
        tried.append(v)
        loads.clear()
        try:
            main(argv_for(_value(v), f"{out}{len(tried)}"))
            code = 0
        except SystemExit as e:
            code = e.code
        err = capsys.readouterr().err
        assert "Traceback" not in err, (flag, v, err[-2000:])
        if code == 0:
            return tried, True
        assert code == 2 and err.startswith("error:") and len(err.strip().splitlines()) == 1, (flag, v, code, err)
        assert not loads, f"{flag} {v}: refused after the model was loaded: {err}"
    return tried, False


@pytest.mark.slow
@pytest.mark.parametrize("flag", numeric_flags(cli.build_parser()))
def test_train_flag_at_its_smallest_valid_value(flag, tmp_path, monkeypatch, capsys):
    kind = next(a.type for a in cli.build_parser()._actions if flag in a.option_strings)

    def argv(value, out):
        return [*TRAIN, *TRAIN_WITH.get(flag, []), flag, value, "--out", out]
    tried, finished = _smallest_valid(T.main, T, flag, kind, argv, tmp_path / "run", monkeypatch, capsys)
    print(f"{flag}: {', '.join(map(_value, tried))}" + (" (runs)" if finished else " (all refused)"))
    for k in range(1, len(tried) + 1):  # a refusal leaves nothing; a finished run is renamed from .partial
        assert not (tmp_path / f"run{k}.partial").exists()
        last = k == len(tried) and finished and flag != "--plan"  # --plan prints the plan and writes nothing
        assert (tmp_path / f"run{k}" / "results.json").is_file() if last else not (tmp_path / f"run{k}").exists()


@pytest.mark.slow
@pytest.mark.parametrize("flag", numeric_flags(E.build_parser()))
def test_eval_flag_at_its_smallest_valid_value(flag, tmp_path, monkeypatch, capsys):
    import toy
    kind = next(a.type for a in E.build_parser()._actions if flag in a.option_strings)
    data = toy.WORLD_DIR / "test.jsonl"

    def argv(value, out):
        return ["--model", str(toy.WORLD_DIR / "model"), "--data", str(data), "--limit", "2", "--max-new-tokens", "6",
                *EVAL_WITH.get(flag, []), flag, value, "--out", f"{out}.json"]
    tried, finished = _smallest_valid(E.main, E, flag, kind, argv, tmp_path / "p", monkeypatch, capsys)
    print(f"{flag}: {', '.join(map(_value, tried))}" + (" (runs)" if finished else " (all refused)"))
    written = sorted(p.name for p in tmp_path.iterdir())  # only the run that finished wrote anything
    assert written == ([f"p{len(tried)}.json"] + ([f"p{len(tried)}.png"] if len(written) > 1 else [])
                       if finished and EVAL_WITH.get(flag) else
                       [f"p{len(tried)}.json", f"p{len(tried)}.summary.json"] if finished else [])


@pytest.mark.parametrize("main, argv", [
    (T.main, ["--temperature", "1e-40"]), (T.main, ["--eval-temperature", "1e-40"]),
    (E.main, ["--model", "m", "--data", "d.jsonl", "--n", "2", "--temperature", "1e-40"]),
    (E.main, ["--model", "m", "--data", "d.jsonl", "--temperature", "nan"])])
def test_a_temperature_too_small_to_divide_by_is_refused(main, argv, tmp_path, capsys):
    """Sampling divides the logits by the temperature in fp32: 1e-40 made them inf and ended a run with an
    IndexError. Below MIN_TEMPERATURE (1e-6) it is refused in one line, before anything is read."""
    with pytest.raises(SystemExit) as e:
        main([*argv, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert err.startswith(("error: --temperature must be 0 (greedy) or at least 1e-06",
                           "error: --eval-temperature must be at least 1e-06")), err
    assert len(err.strip().splitlines()) == 1 and list(tmp_path.iterdir()) == []
