# Mirrors Ray's doc_code/ray-dag.py (Ray Core "Lazy computation graphs with
# the Ray DAG API").
# Checks: func.bind(...) builds a lazy node; .execute() returns a ref;
# bound nodes as arguments (also as keyword arguments); Actor.bind and
# method binds on a bound actor; InputNode with execute(value); indexing
# the input (input_data["x"]); MultiOutputNode returning a list of refs; a
# method bound on a live actor handle is reused across executions.
import penumbra as ray

ray.init()


@ray.remote
def func(src, inc=1):
    return src + inc


a_ref = func.bind(1, inc=2)
assert ray.get(a_ref.execute()) == 3
b_ref = func.bind(a_ref, inc=3)
assert ray.get(b_ref.execute()) == 6
c_ref = func.bind(b_ref, inc=a_ref)
assert ray.get(c_ref.execute()) == 9
ray.shutdown()

ray.init()


@ray.remote
class Actor:
    def __init__(self, init_value):
        self.i = init_value

    def inc(self, x):
        self.i += x

    def get(self):
        return self.i


a1 = Actor.bind(10)
assert ray.get(a1.get.bind().execute()) == 10


@ray.remote
def combine(x, y):
    return x + y


a2 = Actor.bind(10)
a1.inc.bind(2)
a1.inc.bind(4)
a2.inc.bind(6)
dag = combine.bind(a1.get.bind(), a2.get.bind())
assert ray.get(dag.execute()) == 32
ray.shutdown()

ray.init()
from penumbra.dag.input_node import InputNode  # noqa: E402
from penumbra.dag.output_node import MultiOutputNode  # noqa: E402


@ray.remote
def a(x):
    return x * 2


@ray.remote
def b(x):
    return x + 1


@ray.remote
def c(x, y):
    return x + y


with InputNode() as dag_input:
    dag = c.bind(a.bind(dag_input), b.bind(dag_input))
assert ray.get(dag.execute(2)) == 7
assert ray.get(dag.execute(3)) == 10


@ray.remote
def f(x):
    return x + 1


with InputNode() as input_data:
    dag = MultiOutputNode([f.bind(input_data["x"]), f.bind(input_data["y"])])
assert ray.get(dag.execute({"x": 1, "y": 2})) == [2, 3]


@ray.remote
class Worker:
    def __init__(self):
        self.forwarded = 0

    def forward(self, x):
        self.forwarded += 1
        return x + 1

    def num_forwarded(self):
        return self.forwarded


worker = Worker.remote()
with InputNode() as input_data:
    dag = MultiOutputNode([worker.forward.bind(input_data)])
assert ray.get(dag.execute(1)) == [2]
assert ray.get(dag.execute(2)) == [3]
assert ray.get(dag.execute(3)) == [4]
assert ray.get(worker.num_forwarded.remote()) == 3
