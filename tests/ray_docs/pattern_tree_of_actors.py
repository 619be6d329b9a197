# Mirrors Ray's doc_code/pattern_tree_of_actors.py (Ray Core pattern "Using
# a supervisor actor to manage a tree of actors").
# Checks: supervisor actors create trainer actors in their constructor and
# fan calls out to them; results [1, 2, 3] and [2, 4, 6].  Implicit init.
# Scaled down: num_cpus=0.25 per actor instead of 1 (the doc's 2 supervisors
# + 6 trainers need 8 CPUs; 8 x 0.25 fit on 2).
import penumbra as ray


@ray.remote(num_cpus=0.25)
class Trainer:
    def __init__(self, hyperparameter, data):
        self.hyperparameter = hyperparameter
        self.data = data

    def fit(self):
        return self.data * self.hyperparameter


@ray.remote(num_cpus=0.25)
class Supervisor:
    def __init__(self, hyperparameter, data):
        self.trainers = [Trainer.remote(hyperparameter, d) for d in data]

    def fit(self):
        return ray.get([t.fit.remote() for t in self.trainers])


data = [1, 2, 3]
s1 = Supervisor.remote(1, data)
s2 = Supervisor.remote(2, data)
m1, m2 = s1.fit.remote(), s2.fit.remote()
assert ray.get(m1) == [1, 2, 3]
assert ray.get(m2) == [2, 4, 6]
