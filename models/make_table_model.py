"""Build `table_lookup.onnx`: a model that fails on some inputs, for the
tests of what the engine does when inference fails on a batch.

It takes one float32 input `features` of shape [rows, 1], truncates each
value to an integer index and looks it up in a table of ten scores
(`score`, float32 [rows, 1]). ONNX Runtime checks the indices when it runs
the model: a value of 10 or more (or below -10) fails the whole run with
"indices element out of data bounds". Values within the table score
`index / 10`. The `.onnx` file is committed; rerun this only to change it:

    python3 -m venv /tmp/models-env
    /tmp/models-env/bin/pip install onnx
    /tmp/models-env/bin/python models/make_table_model.py
"""

import pathlib

import onnx
from onnx import TensorProto, helper

HERE = pathlib.Path(__file__).resolve().parent


def table_model() -> onnx.ModelProto:
    table = helper.make_tensor(
        "table", TensorProto.FLOAT, [10], [index / 10 for index in range(10)]
    )
    nodes = [
        helper.make_node("Cast", ["features"], ["index"], to=TensorProto.INT64),
        helper.make_node("Gather", ["table", "index"], ["score"], axis=0),
    ]
    graph = helper.make_graph(
        nodes,
        "table_lookup",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["rows", 1])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["rows", 1])],
        initializer=[table],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="tideflow"
    )
    # The ONNX Runtime the engine loads reads IR version 10 and older.
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


if __name__ == "__main__":
    onnx.save(table_model(), HERE / "table_lookup.onnx")
