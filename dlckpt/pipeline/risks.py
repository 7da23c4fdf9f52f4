"""What in a tf.data pipeline can break an exact resume, read from its serialized graph.

Before a round trip runs, the dataset's graph (the GraphDef TensorFlow itself would save,
from `DatasetToGraphV2`) and its options are walked for the settings that make a restored
iterator diverge: nondeterministic parallel ops, an external-state policy that lets a
stateful op be skipped, stateful ops inside the pipeline's functions, and an unseeded
shuffle that reshuffles at every epoch. The same walk sizes the comparison window: the
elements held by the shuffle, prefetch, parallel-map and interleave buffers at save time.

The round trip still decides the verdict; this module only names likely causes and fixes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

# Buffers sized AUTOTUNE (-1) have no size in the graph; assume this many (a generous
# bound for tf.data's autotuner on a small host), so the window errs long, not short.
AUTOTUNE_GUESS = max(16, 2 * (os.cpu_count() or 1))

# Stateful ops TensorFlow refuses to save (or skips under IGNORE/WARN), by kind.
_GENERATOR_OPS = {
    "RngReadAndSkip", "RngSkip", "StatefulUniform", "StatefulUniformInt",
    "StatefulUniformFullInt", "StatefulStandardNormal", "StatefulStandardNormalV2",
    "StatefulTruncatedNormal", "StatefulRandomBinomial", "NonDeterministicInts",
}  # fmt: skip
_RANDOM_OPS = {
    "RandomUniform", "RandomUniformInt", "RandomStandardNormal", "TruncatedNormal",
    "RandomShuffle", "RandomGamma", "RandomGammaV2", "RandomPoisson", "RandomPoissonV2",
    "Multinomial", "ParameterizedTruncatedNormal", "RandomCrop",
}  # fmt: skip
_VARIABLE_OPS = {
    "ReadVariableOp", "ResourceGather", "ResourceGatherNd", "AssignVariableOp",
    "AssignAddVariableOp", "AssignSubVariableOp", "VarHandleOp", "VariableV2",
    "ResourceScatterUpdate", "ResourceScatterAdd",
}  # fmt: skip
_TABLE_OPS = {
    "LookupTableFindV2", "LookupTableSizeV2", "LookupTableImportV2", "LookupTableInsertV2",
    "LookupTableExportV2", "LookupTableRemoveV2", "HashTableV2", "MutableHashTableV2",
    "MutableDenseHashTableV2", "MutableHashTableOfTensorsV2", "InitializeTableV2",
    "InitializeTableFromTextFileV2",
}  # fmt: skip
_PY_OPS = {"PyFunc", "EagerPyFunc", "PyFuncStateless"}

# Advice by kind: what to use instead. The round trip's save error uses the same table.
ADVICE = {
    "shuffle_seed": (
        "a shuffle built inside a function passed to flat_map / interleave / Dataset.load's "
        "reader_func holds a seed generator the iterator checkpoint cannot hold, with a seed "
        "or without; shuffle outside the function instead (after the flat_map / interleave, "
        "or the file list before it), with shuffle(..., seed=N)"
    ),
    "generator": (
        "tf.random.Generator keeps its state in a variable outside the dataset, which the "
        "iterator checkpoint cannot hold; draw with tf.random.stateless_* and a seed derived "
        "from the element (e.g. tf.stack([seed, index]), or zip with "
        "tf.data.Dataset.random(seed=...))"
    ),
    "random": (
        "an unseeded tf.random op keeps hidden generator state; use tf.random.stateless_* with "
        "a seed derived from the element (e.g. its index, or zip in "
        "tf.data.Dataset.random(seed=...))"
    ),
    "variable": (
        "a tf.Variable (or other resource) read inside the pipeline lives outside the dataset; "
        "if its value is fixed, capture it as a constant (tf.constant(var.numpy())) before "
        "building the pipeline; if it changes during training, save it with the model, not "
        "the iterator"
    ),
    "table": (
        "a lookup table (tf.lookup, StringLookup, TextVectorization) is a resource outside "
        "the dataset; build the vocabulary as constants and look it up with tf.gather / "
        "tf.searchsorted, or keep the table static and set the external-state policy to WARN "
        "knowing its contents are not saved"
    ),
    "py": (
        "tf.py_function / tf.numpy_function / Dataset.from_generator run Python whose state "
        "TensorFlow cannot save; read from files (TFRecord, ArrayRecord) or generate with "
        "Dataset.range + map, or rewrite the function with TensorFlow ops"
    ),
}


# Transformations whose state TensorFlow cannot save, named as the user wrote them, and a
# fix that works for each (the op's own advice would not: rejection_resample's seed does not
# make it saveable, and a scan's variable cannot move to the model).
TRANSFORMATION_FIXES = {
    "prefetch_to_device": (
        "leave prefetch_to_device (and copy_to_device, built on a generator that cannot be "
        "checkpointed) out of the pipeline whose iterator is saved: end it with a plain "
        "prefetch(...) and copy each batch to the device in the train step (or let the "
        "distribution strategy do it)"
    ),
    "rejection_resample": (
        "rejection_resample draws its accept/reject decisions with a stateful random op "
        "inside TensorFlow's own filter, so passing it a seed does not make it saveable; "
        "resample with stateless draws keyed on the element instead, e.g. filter(lambda e: "
        "tf.random.stateless_uniform([], seed=tf.stack([SEED, e['index']])) < keep[label]), "
        "or mix per-class datasets with sample_from_datasets(weights, seed=...)"
    ),
    "scan": (
        "scan's function updates a tf.Variable, which lives outside the dataset and cannot "
        "be saved with the iterator; carry the value in scan's own state instead: "
        "scan(initial_state, lambda state, x: (new_state, output)), e.g. a count as "
        "state + 1"
    ),
}


def unsaveable_transformation(dataset: Any, op: str) -> str | None:
    """The key in TRANSFORMATION_FIXES of the transformation in `dataset` that holds `op`
    (a stateful op, or a dataset TensorFlow cannot checkpoint), or None if none is known."""
    if _python_chain_has(dataset, ("CopyToDevice", "PrefetchToDevice")):
        return "prefetch_to_device"
    try:
        graph_def = _graph_def(dataset)
    except Exception:  # a graph TensorFlow cannot serialize: nothing more to tell
        return None
    ops_by_function = _function_ops(graph_def.library)
    for node in graph_def.node:
        for function in _functions_of(node):
            found = _transformation_of(node, function, op)
            if op in ops_by_function.get(function, ()) and found is not None:
                return found
    return None


def _transformation_of(node: Any, function: str, op: str) -> str | None:
    """The TRANSFORMATION_FIXES key for `op` run by `function` of graph `node`, if known."""
    # TensorFlow's rejection_resample filters with its own `_reject` function.
    if node.op.startswith("Filter") and "_reject" in function:
        return "rejection_resample"
    if node.op.startswith("Scan") and stateful_kind(op) == "variable":
        return "scan"
    return None


def _python_chain_has(dataset: Any, fragments: tuple[str, ...], depth: int = 0) -> bool:
    """Whether a dataset object of a type named with one of `fragments` feeds `dataset`."""
    if depth > 200 or dataset is None:
        return False
    if any(fragment in type(dataset).__name__ for fragment in fragments):
        return True
    inputs: list[Any] = getattr(dataset, "_inputs", lambda: [])()
    return any(_python_chain_has(i, fragments, depth + 1) for i in inputs)


# The seed generators a shuffle makes: inside a function (flat_map, interleave, a load
# reader) TensorFlow cannot save them, seeded or not (tests/test_graph_shuffles.py).
_SEED_GENERATOR_OPS = {"DummySeedGenerator", "AnonymousSeedGenerator", "SeedGenerator"}


def stateful_kind(op: str) -> str | None:
    """The kind of a stateful op type ("generator", "random", ...), or None."""
    if op in _SEED_GENERATOR_OPS:
        return "shuffle_seed"
    for kind, ops in (
        ("generator", _GENERATOR_OPS),
        ("random", _RANDOM_OPS),
        ("variable", _VARIABLE_OPS),
        ("table", _TABLE_OPS),
        ("py", _PY_OPS),
    ):
        if op in ops:
            return kind
    if op.startswith("RandomDataset"):
        # Dataset.random inside a function saves with the iterator, seeded or not (TF 2.15
        # and 2.21, a new user's check); unseeded, it is a redraw risk instead.
        return None
    if op.startswith("Random") or op.startswith("Stateful"):
        return "random" if op.startswith("Random") else "generator"
    return None


def generic_advice(op: str) -> str:
    """Where to look for an op this module does not know."""
    return (
        f"find {op} in your builder: it runs inside a function passed to map / filter / "
        "flat_map / interleave (or a library call made there); replace it with a stateless "
        "equivalent or compute its value from constants before building the pipeline"
    )


@dataclass
class Risk:
    """One setting that can break an exact resume: where it is, why, and the fix."""

    # "deterministic", "external_state", "stateful_op", "unseeded_shuffle", "unread_graph"
    kind: str
    where: str
    why: str
    fix: str
    # True when no comparison this run makes can reach the divergence (a shuffle that draws
    # a new order at a pass the window cannot reach): the run cannot end in a pass.
    unverifiable: bool = False

    def line(self) -> str:
        return f"{self.where}: {self.why}; {self.fix}"

    def report(self) -> dict[str, str]:
        return {"kind": self.kind, "where": self.where, "why": self.why, "fix": self.fix}


@dataclass
class PipelineAnalysis:
    """The risks, and the buffers' capacity at save time in output batches (see module doc)."""

    risks: list[Risk] = field(default_factory=list)
    # Output batches' worth of elements the buffers hold at save time (shuffle + in flight).
    buffered_batches: float = 0.0
    # The shuffle buffer nearest the output, and how many of its elements make an output batch.
    shuffle_buffer: int | None = None
    elements_per_batch: int = 1
    # Output batches per epoch when a repeat re-runs a reshuffling shuffle (else None).
    epoch_batches: int | None = None
    # Graph nodes the buffer walk judged (the line from the output back, up to where one
    # input makes an unknown number of outputs); the whole-graph scan judges the rest.
    walked: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)
    # (op, seed, seed2) of every random draw, as this build holds them (pipeline.seeds;
    # None: the graph was not read).
    seeds: list[tuple[str, int, int]] | None = None
    # (what it is, digest) of every other constant, as this build holds them (pipeline.seeds).
    constants: list[tuple[str, str]] | None = None
    # A snapshot, or a cache() to files: iterators share state on disk (None: not read).
    state_on_disk: bool | None = None


class GraphUnreadable(Exception):
    """The pipeline's graph could not be read whole (the message says why)."""


def unread_graph_analysis(why: str, buffer: int) -> PipelineAnalysis:
    """The analysis of a graph that could not be read: the window assumes one element a
    batch (`buffer` buffered), and one unverifiable risk, so a match is never a pass (a
    shuffle that draws a new order past the window could not be looked for)."""
    return PipelineAnalysis(
        risks=[
            Risk(
                "unread_graph",
                "the pipeline's graph",
                f"could not be read ({why}), so a shuffle without a seed that draws a new "
                "order after the compared batches could not be looked for",
                "keep large arrays out of the graph (write them to TFRecord files, or read "
                "them with Dataset.from_generator) so the graph can be read",
                unverifiable=True,
            )
        ],
        buffered_batches=float(buffer),
    )


def _read_graph(dataset: Any) -> Any:
    """`dataset`'s GraphDef; GraphUnreadable when TensorFlow returns it empty."""
    graph_def = _graph_def(dataset)
    if not graph_def.node:
        # TensorFlow logs "GraphDef exceeded maximum protobuf size of 2GB" and returns an
        # empty graph (measured on TF 2.21 with a 2.1 GB tensor in from_tensors): a large
        # in-memory array inside the pipeline. Nothing of it was read.
        raise GraphUnreadable(
            "TensorFlow serialized it as an empty graph, as it does past protobuf's 2 GB "
            "limit: a large in-memory array inside the pipeline"
        )
    return graph_def


def _graph_def(dataset: Any) -> Any:
    from dlckpt.runtime.tf_import import import_tensorflow

    tf = import_tensorflow()
    ignore = 1  # ExternalStatePolicy.IGNORE: serialize even a pipeline that cannot be saved
    serialized = tf.raw_ops.DatasetToGraphV2(
        input_dataset=dataset._variant_tensor,
        external_state_policy=ignore,
        strip_device_assignment=True,
    )
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(serialized.numpy())
    return graph_def


def _const_int(nodes: dict[str, Any], name: str) -> int | None:
    node = nodes.get(name.split(":")[0].lstrip("^"))
    if node is None or node.op != "Const":
        return None
    tensor = node.attr["value"].tensor
    values = list(tensor.int64_val) or list(tensor.int_val)
    return int(values[0]) if values else None


def _functions_of(node: Any) -> list[str]:
    """The names of the functions `node` carries in its attributes (one, or a list: a
    switch_case's branches), in attribute name order (a protobuf map's own order is not
    fixed: the walks that compare two builds need one)."""
    names = []
    for key in sorted(node.attr):
        names.append(node.attr[key].func.name)
        names += [f.name for f in node.attr[key].list.func]
    return [name for name in names if name]


def _function_ops(library: Any) -> dict[str, set[str]]:
    """Every op type each library function runs, through the functions it calls."""
    functions = {f.signature.name: f for f in library.function}
    direct: dict[str, tuple[set[str], set[str]]] = {}
    for name, function in functions.items():
        ops: set[str] = set()
        calls: set[str] = set()
        for node in function.node_def:
            (calls if node.op in functions else ops).add(node.op)
            calls.update(_functions_of(node))
        direct[name] = (ops, calls)
    closed: dict[str, set[str]] = {}
    for name in functions:
        seen, stack, ops = {name}, [name], set()
        while stack:
            current_ops, calls = direct[stack.pop()]
            ops |= current_ops
            for call in calls - seen:
                if call in direct:
                    seen.add(call)
                    stack.append(call)
        closed[name] = ops
    return closed


def _user_function_name(function_name: str) -> str:
    """`__inference_Dataset_map_make_step_123` -> `make_step` (the Python function's name)."""
    name = function_name.removeprefix("__inference_").rsplit("_", 1)[0]
    for prefix in ("Dataset_map_", "Dataset_filter_", "Dataset_flat_map_", "Dataset_interleave_"):
        if name.startswith(prefix):
            name = name[len(prefix) :]
            break
    # A callable without a __name__ (a functools.partial, as TFDS's reader passes) is named
    # by TensorFlow from its class, "<class 'functools.partial'>" with the punctuation dropped.
    if name.startswith("class") and "." in name:
        kind = name.removeprefix("class")
        # A class passed as the function (interleave(tf.data.TFRecordDataset)) is named by
        # its metaclass, which would read "a abc.ABCMeta".
        return "a dataset class" if kind in ("abc.ABCMeta", "type") else f"a {kind}"
    return name


def _where(node: Any) -> str:
    functions = [_user_function_name(f) for f in _functions_of(node)]
    op = node.op.split("Dataset")[0] or node.op
    return f"{op}({', '.join(functions)})" if functions else op


def _deterministic_risks(graph_def: Any, options_deterministic: bool | None) -> Iterable[Risk]:
    """Parallel ops set not to keep their order, on the main line or inside a function
    (an interleave's, a flat_map's, a Dataset.load reader's: new users' pipelines with
    deterministic=False there passed while a resumed read diverged at batch 175 and 958).
    Inside a function, an op left at "default" is counted too when the options say
    False: whether they reach it is TensorFlow's business, and a risk named that is not
    one costs a warning, a missed one a false pass."""
    for _, node, carrier in _walked(graph_def):
        attr = node.attr["deterministic"].s.decode() if "deterministic" in node.attr else ""
        if attr == "false" or (attr == "default" and options_deterministic is False):
            source = "deterministic=False" if attr == "false" else "options.deterministic=False"
            fix = (
                "pass deterministic=True"
                if attr == "false"
                else "set options.deterministic = True (or deterministic=True on the op)"
            )
            where = _where(node) + (f" inside {_where(carrier)}" if carrier is not None else "")
            yield Risk(
                "deterministic",
                where,
                f"runs with {source}, so its output order depends on thread timing and a "
                "restored iterator draws different elements",
                fix,
            )


def _stateful_op_risks(graph_def: Any, policy: str) -> Iterable[Risk]:
    ops_by_function = _function_ops(graph_def.library)
    for node in graph_def.node:
        for function in _functions_of(node):
            for op in sorted(ops_by_function.get(function, ())):
                kind = stateful_kind(op)
                if kind is None or (node.op.startswith("Load") and op in _SEED_GENERATOR_OPS):
                    # Dataset.load runs its reader function once per iterator and saves the
                    # reader's iterator: a shuffle there saves (measured on TF 2.21; seeded,
                    # it resumes exactly). Unseeded, it is a redraw risk (see below).
                    continue
                consequence = (
                    "TensorFlow refuses to save the iterator"
                    if policy == "FAIL"
                    else f"the checkpoint skips its state (external-state policy {policy}), "
                    "so a restored iterator computes different values"
                )
                transformation = _transformation_of(node, function, op)
                fix = TRANSFORMATION_FIXES[transformation] if transformation else ADVICE[kind]
                where = f"{transformation or _where(node)} uses {op}"
                yield Risk("stateful_op", where, consequence, fix)


def _shuffle_facts(nodes: dict[str, Any], node: Any) -> tuple[int | None, bool, bool]:
    """(buffer_size, seeded, reshuffle_each_iteration) of a Shuffle* node."""
    buffer = _const_int(nodes, node.input[1]) if len(node.input) > 1 else None
    seeded = not _draws_unseeded(nodes, node)
    reshuffle = (
        node.attr["reshuffle_each_iteration"].b if "reshuffle_each_iteration" in node.attr else True
    )
    return buffer, seeded, reshuffle


def _capacity(nodes: dict[str, Any], node: Any) -> int:
    """Elements (at this node's output level) a buffering node holds; 0 for others."""

    def value(index: int) -> int:
        number = _const_int(nodes, node.input[index]) if len(node.input) > abs(index) else None
        return AUTOTUNE_GUESS if number is None or number < 0 else number

    data_inputs = [i for i in node.input if not i.startswith("^")]
    if node.op.startswith("Prefetch"):
        return value(1)
    if node.op.startswith("ParallelMap") or node.op.startswith("ParallelFilter"):
        return value(len(data_inputs) - 1)
    if node.op.startswith("ParallelInterleave"):
        # inputs: ..., cycle_length, block_length, buffer_output_elements, prefetch, parallel
        cycle, block = value(len(data_inputs) - 5), value(len(data_inputs) - 4)
        return cycle * max(block, 1) + value(len(data_inputs) - 1)
    return 0


def analyze(dataset: Any) -> PipelineAnalysis:
    """Walk `dataset`'s graph and options: the risks, and the buffers' size at save time.

    Never iterates the dataset (no iterator is created), so it is safe on pipelines that
    hold exclusive resources. Raises nothing for graphs it does not understand: unknown
    parts become notes, and counts err on the long side.
    """
    graph_def = _read_graph(dataset)
    nodes = {node.name: node for node in graph_def.node}
    options = dataset.options()
    policy_value = options.experimental_external_state_policy
    policy = getattr(policy_value, "name", "FAIL") if policy_value is not None else "FAIL"
    analysis = PipelineAnalysis()
    analysis.risks.extend(_deterministic_risks(graph_def, options.deterministic))
    analysis.risks.extend(_stateful_op_risks(graph_def, policy))
    if policy in ("IGNORE", "WARN"):
        analysis.risks.append(
            Risk(
                "external_state",
                f"options.experimental_external_state_policy={policy}",
                "lets the checkpoint skip state it cannot save instead of refusing",
                "leave the policy at FAIL, so a save names any stateful op",
            )
        )
    analysis.checked = [
        "deterministic=False on parallel ops and in options",
        f"external-state policy ({policy})",
        "stateful ops in the pipeline's functions",
        "shuffle seeds across epochs, anywhere in the graph",
    ]
    analysis.seeds = _seeds_in(graph_def)
    analysis.constants = constants_in(graph_def)
    caches = _cache_filenames(graph_def)
    snapshots = any(node.op.startswith("Snapshot") for _, node, _ in _walked(graph_def))
    # Iterators share state on disk: a second one reads what the first wrote, or its lock.
    analysis.state_on_disk = snapshots or bool(caches)
    analysis.risks.extend(_file_cache_risks(caches))
    _walk_buffers(dataset, graph_def, nodes, analysis)
    analysis.risks.extend(_redrawing_shuffle_risks(graph_def, analysis.walked))
    for risk in analysis.risks:
        if risk.kind == "unseeded_shuffle" and analysis.epoch_batches is None:
            risk.unverifiable = True  # no window can be planned to its next draw
    return analysis


SHUFFLE_SEED_FIX = (
    "give that shuffle a seed: shuffle(..., seed=N), list_files(..., seed=N), TFDS "
    "ReadConfig(shuffle_seed=N), or tf.random.set_seed(N) before building the pipeline"
)


def _output_node(graph_def: Any) -> str | None:
    """The name of the dataset node the serialized graph returns (None: none found)."""
    output = next((n for n in graph_def.node if n.op == "_Retval"), None)
    return output.input[0].split(":")[0] if output is not None and output.input else None


def _data_inputs(node: Any) -> list[str]:
    """The names of the nodes feeding `node` (control inputs left out)."""
    return [i.split(":")[0] for i in node.input if not i.startswith("^")]


def _redrawing_shuffle_risks(graph_def: Any, walked: set[str]) -> list[Risk]:
    """Unseeded random draws the buffer walk did not judge, anywhere in the graph.

    Every input of every dataset node is followed (zip, sample_from_datasets /
    choose_from_datasets, concatenate, the input side of interleave, datasets captured by a
    function), and every function a node carries (interleave / flat_map / Dataset.load reader
    functions) is read for the datasets it builds. A shuffle, a global shuffle or a random
    dataset (Dataset.random, sample_from_datasets' choices) without a seed draws from seeds
    the iterator checkpoint does not hold whenever its iterator is made anew: at each pass a
    repeat above it starts, at each call of the function that captures it, when concatenate
    reaches its second input, and inside a function at every call (with
    reshuffle_each_iteration=False too: its one order is drawn anew in every process).
    """
    nodes = {node.name: node for node in graph_def.node}
    functions = {f.signature.name: f for f in graph_def.library.function}
    start = _output_node(graph_def)
    if start is None:
        return []
    risks: list[Risk] = []
    seen: set[tuple[str, str]] = set()
    read_functions: set[str] = set()
    # (node name, why its iterator is made anew after the save ("": it is not), consumer)
    stack = [(start, "", "the output")]
    while stack:
        name, again, consumer = stack.pop()
        node = nodes.get(name)
        if (name, again) in seen or node is None or "Dataset" not in node.op:
            continue
        seen.add((name, again))
        # A fused shuffle_and_repeat redraws at each pass of the repeat it holds, wherever it
        # sits (a file list's, under an interleave, passed while it diverged at its next pass).
        here = again or (UNDER_A_REPEAT if _repeats_itself(nodes, node) else "")
        # The main line's shuffles under a plain repeat are judged by the buffer walk, whose
        # window is planned past their next draw.
        judged = name in walked and node.op.startswith("Shuffle") and here == UNDER_A_REPEAT
        if here and not judged and _draws_unseeded(nodes, node):
            risks.append(_redraw_risk(node, consumer, here))
        stack += _inputs_made_anew(node, again, consumer, nodes)
        for function in _functions_of(node):
            risks += _function_shuffle_risks(functions, function, _where(node), read_functions)
    return risks


UNDER_A_REPEAT = "under a repeat"


def _inputs_made_anew(
    node: Any, again: str, consumer: str, nodes: dict[str, Any]
) -> list[tuple[str, str, str]]:
    """`node`'s dataset inputs, each with why its iterator is made anew after a save ("" if
    it is not) and the consumer to name: a repeat's input at each pass; concatenate's later
    inputs when the first ends; datasets a function captures (inputs after the first of a
    node that carries a function) at each call."""
    inputs = [
        name for name in _data_inputs(node) if "Dataset" in getattr(nodes.get(name), "op", "")
    ]
    if node.op.startswith("Repeat"):
        # A repeat is named by the clause "under a repeat": the consumer named is the next one.
        return [(name, again or UNDER_A_REPEAT, consumer) for name in inputs]
    label = _consumer_label(node)
    first, later = inputs[:1], inputs[1:]
    if node.op.startswith("Concatenate"):
        anew = again or "in a later input of concatenate, started only when the one before ends"
    elif _functions_of(node) and not node.op.startswith("DirectedInterleave"):
        anew = again or f"captured by {_where(node)}, read anew at every call"
    else:
        return [(name, again, label) for name in inputs]
    # The clause names the consumer itself: none is named again.
    return [(name, again, label) for name in first] + [
        (name, anew, label if again else "") for name in later
    ]


def seeds_and_constants(
    dataset: Any,
) -> tuple[list[tuple[str, int, int]], list[tuple[str, str]]]:
    """(op, seed, seed2) of every random draw in `dataset`'s graph and its functions, in
    walk order (_walked), and its other constants (constants_in; see pipeline.seeds). Raises
    GraphUnreadable for an empty graph."""
    graph_def = _read_graph(dataset)
    return _seeds_in(graph_def), constants_in(graph_def)


# Resource and variant constants are handles (a seed generator's, a lookup table's): named
# per process; the state behind them is the checkpoint's, not the graph's.
_HANDLES = {20, 21}  # DT_RESOURCE, DT_VARIANT (tensorflow/core/framework/types.proto)


def _walked(graph_def: Any) -> Iterator[tuple[dict[str, Any], Any, Any]]:
    """(its body's nodes by name, node, the node carrying its function or None on the main
    graph) for every node the pipeline's results read, in the
    order a walk from the output meets them: each node's data inputs in their order, a
    function's body where a node carries it (from its results, in their order), each
    function once. The order follows the pipeline's structure, not how the graph happens
    to list its nodes and functions: that differs from process to process (TFDS's
    decoders are listed in another order with the same dataflow; function names carry
    per-process counters), and a comparison in listing order raised false alarms."""
    functions = {f.signature.name: f for f in graph_def.library.function}
    entered: set[str] = set()

    def walk(
        nodes: dict[str, Any], roots: list[str], carrier: Any
    ) -> Iterator[tuple[dict[str, Any], Any, Any]]:
        for node in _in_walk_order(nodes, roots):
            yield nodes, node, carrier
            for name in _functions_of(node):
                if name in functions and name not in entered:
                    entered.add(name)
                    body = functions[name]
                    results = [body.ret[k].split(":")[0] for k in sorted(body.ret)]
                    yield from walk({n.name: n for n in body.node_def}, results, node)

    start = _output_node(graph_def)
    main = {n.name: n for n in graph_def.node}
    yield from walk(main, [start] if start else list(main), None)


def constants_in(graph_def: Any) -> list[tuple[str, str]]:
    """(what it is, digest) of every constant the pipeline's results read, in walk order
    (_walked). Random draws' seeds are left out (compared on their own, pipeline.seeds),
    and so is what no result reads through a data edge (an assertion's message, a string
    built and dropped: a run id there was a false alarm).

    Two processes that build one pipeline hold the same constants in the same places, or
    they read other data: a file list shuffled in Python or by an eager op at build time
    without a seed, or per-file datasets concatenated in such an order (new users'
    pipelines passed while a resumed read diverged at the next file).
    """
    found: list[tuple[str, str]] = []
    readers: dict[int, tuple[dict[str, str], set[str]]] = {}
    files = _FileReader()
    for nodes, node, _ in _walked(graph_def):
        if id(nodes) not in readers:
            readers[id(nodes)] = _readers_and_seeds(nodes)
        consumers, seed_names = readers[id(nodes)]
        tensor = node.attr["value"].tensor
        if node.op == "Const" and node.name not in seed_names and tensor.dtype not in _HANDLES:
            reader = consumers.get(node.name, "a function result")
            digest, names_files = _constant_digest(tensor, files, reader)
            what = f"{reader}'s {'files' if names_files else 'constant'} {_describe(tensor)}"
            found.append((what, digest))
    return found


# What a constant's named files cost to read, per walk: each file whole up to _WHOLE, else
# its size and first and last _ENDS bytes, in walk order until _BUDGET is read (then a
# file's size alone).
_WHOLE, _ENDS, _BUDGET = 4 * 2**20, 2**20, 64 * 2**20


class _FileReader:
    """Digests of the local files a graph's string constants name, read within one budget
    (shared by all the constants of one walk).

    A builder that writes a file (a manifest of episodes in set() order, which follows the
    per-process hash seed) and has the graph read it holds the same constant, the path, in
    every process, but the file says something else: new users' pipelines passed, and a
    resumed job read other episodes at its next file (batch 701). So a constant that
    names files is compared by what they hold, not by their paths: a manifest larger than
    a few MB and a `file://` URI were passed by an earlier version that read small files
    by plain path only; one written to a new temp folder in each process, the same bytes,
    was a false alarm. A folder whose file a function joins on is not read (left open).
    """

    def __init__(self) -> None:
        self.spent = 0

    def digest(self, value: bytes) -> str | None:
        """The digest of the local file `value` names (None: it names none)."""
        text = value.decode(errors="replace")
        path = text[len("file://") :] if text.startswith("file://") else text
        # Files only: a folder (the temp folder, a data folder being written) changes
        # between two builds for reasons of its own, and was a false alarm.
        try:
            return self._file(path) if os.path.isfile(path) else None
        except (OSError, ValueError):  # unreadable, or a string that is no path
            return None

    def _file(self, path: str) -> str:
        size = os.stat(path).st_size
        if self.spent >= _BUDGET:  # past the budget: its size alone
            return f"size {size}"
        digest = hashlib.blake2b(str(size).encode(), digest_size=8)
        with open(path, "rb") as stream:
            if size <= _WHOLE:
                digest.update(stream.read())
            else:
                digest.update(stream.read(_ENDS))
                stream.seek(size - _ENDS)
                digest.update(stream.read(_ENDS))
        self.spent += size if size <= _WHOLE else 2 * _ENDS
        return digest.hexdigest()


# Ops that write under the path they are given while the pipeline runs: what is there
# differs between two builds without any other data being read.
_WRITERS = ("Snapshot", "CacheDataset", "SaveDataset")


def _constant_digest(tensor: Any, files: _FileReader, reader: str) -> tuple[str, bool]:
    """A constant's digest, with every element that names a local file replaced by what
    it holds (not for a path a writer op is given: _WRITERS); and whether any
    did."""
    from dlckpt.runtime.tf_import import import_tensorflow

    tf = import_tensorflow()
    raw = tensor.SerializeToString(deterministic=True)
    shape = [dim.size for dim in tensor.tensor_shape.dim]
    plain = tensor.dtype != tf.string.as_datatype_enum or reader.startswith(_WRITERS)
    if plain or math.prod(shape) > 10_000:
        return hashlib.blake2b(raw, digest_size=8).hexdigest(), False
    try:
        parsed = tf.io.parse_tensor(raw, tf.string).numpy()
    except Exception:  # not a tensor TensorFlow can parse back: its bytes say enough
        return hashlib.blake2b(raw, digest_size=8).hexdigest(), False
    values = [parsed] if isinstance(parsed, bytes) else parsed.reshape(-1).tolist()
    named = [files.digest(value) for value in values]  # file:// URIs too
    if not any(named):
        return hashlib.blake2b(raw, digest_size=8).hexdigest(), False
    shown = [
        f"file {d}" if d else value.decode(errors="replace")
        for value, d in zip(values, named, strict=True)
    ]
    text = json.dumps([shape, shown])
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest(), True


def _readers_and_seeds(nodes: dict[str, Any]) -> tuple[dict[str, str], set[str]]:
    """For one body: the op that first reads each node, and the names of seed inputs."""
    consumers: dict[str, str] = {}
    seed_names: set[str] = set()
    for node in nodes.values():
        for name in _data_inputs(node):
            consumers.setdefault(name, node.op)
        seed_names.update(_seed_const(nodes, name) for name in _seed_inputs(node) or [])
    return consumers, seed_names


def _in_walk_order(nodes: dict[str, Any], roots: list[str]) -> list[Any]:
    """The nodes `roots` read through data edges, depth first from the roots, each node's
    inputs in their order."""
    order: list[Any] = []
    seen: set[str] = set()
    stack = list(reversed(roots))
    while stack:
        name = stack.pop()
        if name in seen or name not in nodes:
            continue
        seen.add(name)
        order.append(nodes[name])
        stack += reversed(_data_inputs(nodes[name]))
    return order


def _describe(tensor: Any) -> str:
    """A TensorProto as dtype[shape] and its first values (strings cut at 60 characters)."""
    import numpy as np

    from dlckpt.runtime.tf_import import import_tensorflow

    tf = import_tensorflow()
    shape = [dim.size for dim in tensor.tensor_shape.dim]
    text = f"{tf.dtypes.as_dtype(tensor.dtype).name}{shape}"
    if math.prod(shape) > 100_000 or tensor.dtype == tf.variant.as_datatype_enum:
        return text
    try:  # parse_tensor, not make_ndarray: strings may be packed in tensor_content
        dtype = tf.dtypes.as_dtype(tensor.dtype)
        parsed = tf.io.parse_tensor(tensor.SerializeToString(), dtype).numpy()
        values = np.array(parsed, dtype=object).reshape(-1)  # a scalar string is bytes
    except Exception:  # a dtype numpy cannot hold: the type and shape say enough
        return text
    shown = [
        repr(
            value.decode(errors="replace")[:60]
            if isinstance(value, bytes)
            else np.asarray(value).item()
        )
        for value in values[:3]
    ]
    return f"{text} [{', '.join(shown)}{', …' if len(values) > 3 else ''}]"


def _seeds_in(graph_def: Any) -> list[tuple[str, int, int]]:
    """(op, seed, seed2) of every random draw the results read, in walk order (_walked)."""
    found = []
    for nodes, node, _ in _walked(graph_def):
        seeds = _seed_inputs(node)
        if seeds is not None:
            values = [_const_int(nodes, _seed_const(nodes, name)) or 0 for name in seeds]
            values += [0, 0]
            found.append((node.op.split("Dataset")[0], values[0], values[1]))
    return found


def _cache_filenames(graph_def: Any) -> list[str]:
    """The file prefixes of the graph's cache() to files ("?" where not a constant)."""
    found = []
    for nodes, node, _ in _walked(graph_def):
        if node.op.startswith("CacheDataset") and len(node.input) > 1:
            name = nodes.get(node.input[1].split(":")[0])
            if name is None or name.op != "Const":
                found.append("?")
            elif (value := b"".join(name.attr["value"].tensor.string_val)) != b"":
                found.append(value.decode(errors="replace"))
    return found


def _file_cache_risks(caches: list[str]) -> Iterable[Risk]:
    """A cache() to files, written while the iterator is saved (measured on TF 2.21): each
    save closes a partial shard (PREFIX_0.index, .data-…, and its .lockfile, kept); a
    fresh start of the pipeline then fails with "Existing cache files found", and a job
    killed before the pass ends leaves the lock its restored iterator trips on
    (AlreadyExistsError: a new user's check). A graceful resume, what the round trip
    compares, works: named, not blocking a pass."""
    for filename in caches:
        yield Risk(
            "file_cache",
            f"cache({filename!r})",
            "is written while the iterator is saved: each save leaves a partial cache "
            f"({filename}_N.index, .data-…, .lockfile; this run's saves too); a fresh start "
            'then fails with "Existing cache files found", and a job killed before its '
            "first pass ends cannot restore (AlreadyExistsError on the lockfile)",
            "fill the cache before training (iterate the cached dataset once), cache in "
            f"memory (cache()), or save only after the first pass; remove {filename}_* "
            "before a fresh start",
        )


def _seed_const(nodes: dict[str, Any], name: str) -> str:
    """The name of the constant behind a random draw's seed input `name`. In a function
    body TensorFlow feeds seed2 through `select(seed == 0 and seed2 == 0, 2**31 - 1,
    seed2)` (random_seed.get_seed in graph mode): its third input holds the seed the
    user gave. Elsewhere the input itself."""
    node = nodes.get(name.split(":")[0])
    if node is not None and node.op == "SelectV2" and len(node.input) == 3:
        return node.input[2].split(":")[0]
    return name.split(":")[0]


def _seed_inputs(node: Any) -> list[str] | None:
    """The names of a random draw's (seed, seed2) inputs; None for other nodes."""
    if node.op.startswith("Shuffle"):
        return list(node.input[2:4])  # input, buffer_size, seed, seed2[, seed_generator]
    if node.op.startswith("RandomDataset"):
        return list(node.input[0:2])  # seed, seed2[, seed_generator]
    if node.op.startswith("GlobalShuffleDataset"):
        return list(node.input[1:3])  # input, seed, seed2, seed_generator
    return None


def _draws_unseeded(nodes: dict[str, Any], node: Any) -> bool:
    """Whether `node` draws random numbers from seeds it picks itself (no seed given, no
    global seed set): a shuffle, a global shuffle, or a random dataset (Dataset.random,
    and the choices of sample_from_datasets)."""
    seeds = _seed_inputs(node)
    return seeds is not None and not any(
        _const_int(nodes, _seed_const(nodes, seed)) for seed in seeds
    )


def _consumer_label(node: Any) -> str:
    """How a person wrote the node: the Python call where the op name hides it."""
    if node.op.startswith("DirectedInterleave"):
        return "sample_from_datasets / choose_from_datasets"
    if node.op.startswith("Zip"):
        return "zip"
    return _where(node)


def _function_shuffle_risks(
    functions: dict[str, Any], name: str, caller: str, read: set[str]
) -> list[Risk]:
    """Unseeded shuffles built inside `name` (and the functions it calls)."""
    if name in read or name not in functions:
        return []
    read.add(name)
    body = {node.name: node for node in functions[name].node_def}
    risks = []
    for node in functions[name].node_def:
        if _draws_unseeded(body, node):
            risks.append(_redraw_risk(node, "", f"inside {caller}, built anew at every call"))
        for called in [*_functions_of(node), *([node.op] if node.op in functions else [])]:
            risks += _function_shuffle_risks(functions, called, caller, read)
    return risks


def _redraw_risk(node: Any, consumer: str, again: str) -> Risk:
    """An unseeded draw whose iterator is made anew after a save (`again` says when)."""
    feeding = f" feeding {consumer}" if consumer else ""
    if node.op.startswith("RandomDataset"):
        return Risk(
            "unseeded_shuffle",
            f"Dataset.random or sample_from_datasets without a seed {again}",
            "it draws new random numbers (a mixture's choices) when it starts again, from "
            "seeds the iterator checkpoint does not hold, so a resumed job reads another "
            "sequence from then on",
            "give it a seed: sample_from_datasets(..., seed=N), Dataset.random(seed=N), or "
            "tf.random.set_seed(N) before building the pipeline",
            unverifiable=True,
        )
    return Risk(
        "unseeded_shuffle",
        f"{node.op.split('Dataset')[0]} without a seed{feeding} {again}",
        "it draws a new order at its next pass from seeds the iterator checkpoint does not "
        "hold, so a resumed job reads its input in another order from then on",
        "give that global shuffle a seed: global_shuffle(..., seed=N), or "
        "tf.random.set_seed(N) before building the pipeline"
        if node.op.startswith("GlobalShuffle")
        else SHUFFLE_SEED_FIX,
        unverifiable=True,
    )


def _walk_buffers(
    dataset: Any, graph_def: Any, nodes: dict[str, Any], analysis: PipelineAnalysis
) -> None:
    """Output batches' worth of buffered elements, from the output back to the sources.

    Every dataset input is followed, not only the first: the sides of zip, the sources of
    sample_from_datasets / choose_from_datasets and concatenate hold buffers too (counted
    at their branch's scale; the nearest shuffle is the first met along the first inputs).
    A branch stops where one input element makes an unknown number of outputs.
    """
    start = _output_node(graph_def)
    if start is None:
        analysis.epoch_batches = _epoch_batches(dataset, analysis)
        return
    # (node name, output batches per element at that node, a repeat between it and the
    # output, the zip / mixture it feeds if any)
    stack: list[tuple[str, float, bool, str]] = [(start, 1.0, False, "")]
    while stack:
        name, scale, repeat_below, feeding = stack.pop()
        node = nodes.get(name)
        if node is None or "Dataset" not in node.op or name in analysis.walked:
            continue
        analysis.walked.add(name)
        if node.op.startswith("Shuffle"):
            repeats = repeat_below or _repeats_itself(nodes, node)
            _count_shuffle(nodes, node, scale, repeats, analysis, feeding)
        analysis.buffered_batches += _capacity(nodes, node) * scale
        repeat_below = repeat_below or node.op.startswith("Repeat")
        below = _scale_below(nodes, node, scale, analysis)
        if below is None:
            continue
        inputs = _data_inputs(node)
        if node.op.startswith(("Zip", "DirectedInterleave")):
            feeding = _consumer_label(node)
        # Reversed: the first input is walked first, so the nearest shuffle is the main line's.
        stack += [(i, below, repeat_below, feeding) for i in reversed(inputs)]
    analysis.epoch_batches = _epoch_batches(dataset, analysis)


def _repeats_itself(nodes: dict[str, Any], node: Any) -> bool:
    """A ShuffleAndRepeatDataset (tf.data.experimental.shuffle_and_repeat, and the fused op
    TensorFlow's optimizer makes of shuffle().repeat()) holds its repeat: inputs are
    (input, buffer_size, seed, seed2, count, [seed_generator]); count 1 never repeats."""
    if not node.op.startswith("ShuffleAndRepeat"):
        return False
    count = _const_int(nodes, node.input[4]) if len(node.input) > 4 else None
    return count != 1


def _count_shuffle(
    nodes: dict[str, Any],
    node: Any,
    scale: float,
    repeat_below: bool,
    analysis: PipelineAnalysis,
    feeding: str,
) -> None:
    """A shuffle's buffer in output batches; a risk when it has no seed and a repeat above."""
    buffer, seeded, reshuffle = _shuffle_facts(nodes, node)
    if buffer is not None and buffer > 0:
        if analysis.shuffle_buffer is None:
            analysis.shuffle_buffer = buffer
            analysis.elements_per_batch = max(round(1 / scale), 1)
        analysis.buffered_batches += buffer * scale
    # Without a seed the order is drawn from seeds the checkpoint does not carry: anew each
    # epoch (reshuffle_each_iteration=True), or once per process (False), so a resumed
    # job's next epoch differs either way.
    if repeat_below and not seeded:
        analysis.risks.append(
            Risk(
                "unseeded_shuffle",
                f"shuffle(reshuffle_each_iteration={reshuffle}) without a seed"
                + (f" feeding {feeding}" if feeding else "")
                + ", then repeat",
                (
                    "each new epoch draws fresh random seeds that the checkpoint does not "
                    "carry, so the order diverges after the epoch boundary"
                    if reshuffle
                    else "its fixed order is drawn anew in every new process, so a resumed "
                    "job's next epoch comes in another order"
                ),
                SHUFFLE_SEED_FIX,
            )
        )


def _scale_below(
    nodes: dict[str, Any], node: Any, scale: float, analysis: PipelineAnalysis
) -> float | None:
    """Output batches per element at the node's inputs (None: unknown, the walk stops)."""
    if node.op in ("BatchDatasetV2", "PaddedBatchDatasetV2", "BatchDataset"):
        batch = _const_int(nodes, node.input[1])
        return scale / batch if batch and batch > 0 else None
    if node.op.startswith(("Unbatch", "FlatMap", "Interleave", "ParallelInterleave")):
        analysis.notes.append(
            f"buffers upstream of {node.op.split('Dataset')[0]} are not counted "
            "(one input element makes an unknown number of outputs)"
        )
        return None  # one input makes an unknown number of outputs
    return scale


# Datasets whose output count per input element is known between the output and a repeat:
# one output per input (or fewer: take, skip, filter, shard; the epoch then comes sooner than
# counted and the window runs past it), or a batch of `_batch_size` inputs. Any other kind
# (rebatch, unbatch, flat_map, window, zip, ...) makes the epoch's length unknown, so no
# window can be planned to its boundary (measured with rebatch: counted as a tenth of the
# real epoch, the window stopped short of it and a diverging run passed).
_ONE_TO_ONE = {
    "_MapDataset", "_ParallelMapDataset", "_PrefetchDataset", "_ShuffleDataset",
    "CacheDataset", "_TakeDataset", "_SkipDataset", "_FilterDataset", "_OptionsDataset",
    "_IgnoreErrorsDataset", "_AssertCardinalityDataset", "_ShardDataset", "_ScanDataset",
    "_ModelDataset", "_MaxIntraOpParallelismDataset", "_PrivateThreadPoolDataset",
    "_GlobalShuffleDataset",
}  # fmt: skip
_BATCHING = {"_BatchDataset", "_PaddedBatchDataset", "_ParallelBatchDataset"}


def _epoch_batches(dataset: Any, analysis: PipelineAnalysis) -> int | None:
    """Output batches before a repeat starts a new epoch (finite, known inputs only; None
    when an op between the output and the repeat makes the count unknown)."""
    if not any(r.kind == "unseeded_shuffle" for r in analysis.risks):
        return None
    node, batch = dataset, 1
    while node is not None:
        kind = type(node).__name__
        if "Repeat" in kind:
            inner = getattr(node, "_input_dataset", None)
            cardinality = int(inner.cardinality().numpy()) if inner is not None else -1
            return math.ceil(cardinality / batch) if cardinality > 0 else None
        if kind in _BATCHING:
            batch *= max(int(node._batch_size.numpy()), 1)
        elif kind not in _ONE_TO_ONE:
            return None
        node = getattr(node, "_input_dataset", None)
    return None
