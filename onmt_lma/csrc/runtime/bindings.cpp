// onmt_lma._runtime: the torch-free engine's Python module (pybind11); weights come as NumPy float32 arrays.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "model.h"

namespace py = pybind11;

namespace {

runtime::Weights to_weights(const std::map<std::string, py::array_t<float, py::array::c_style | py::array::forcecast>>& arrays) {
  runtime::Weights weights;
  for (const auto& [name, array] : arrays) {
    runtime::Tensor tensor;
    tensor.data.assign(array.data(), array.data() + array.size());
    for (py::ssize_t d = 0; d < array.ndim(); ++d) tensor.shape.push_back(array.shape(d));
    weights.emplace(name, std::move(tensor));
  }
  return weights;
}

}  // namespace

PYBIND11_MODULE(_runtime, m) {
  m.doc() = "onmt-lma's torch-free CPU engine (onmt_lma/deploy/native.py)";
  search::bind_decoding(m);
  py::class_<runtime::Model>(m, "Engine")
      .def(py::init([](const std::map<std::string, py::array_t<float, py::array::c_style | py::array::forcecast>>& arrays,
                       const std::map<std::string, double>& config, const std::string& activation) {
             return new runtime::Model(to_weights(arrays), config, activation, runtime::active_isa());
           }),
           py::arg("weights"), py::arg("config"), py::arg("activation"))
      .def("translate", &runtime::Model::translate, py::call_guard<py::gil_scoped_release>())
      .def("score", &runtime::Model::score, py::call_guard<py::gil_scoped_release>())
      .def("begin", &runtime::Model::begin)
      .def("top_k", [](runtime::Model& model, const std::vector<int64_t>& tokens, int64_t step, int64_t k,
                       const std::vector<int64_t>& banned) {
        std::vector<float> values;
        std::vector<int64_t> ids;
        model.top_k(tokens, step, k, banned, &values, &ids);
        return std::make_pair(values, ids);
      })
      .def("keep", &runtime::Model::keep)
      .def("profile", &runtime::Model::profile)
      .def_property_readonly("isa", [](const runtime::Model& model) { return runtime::isa_name(model.isa()); })
      .def_property_readonly("threads", &runtime::Model::threads);
  m.def("activations", [] {
    std::vector<std::string> names;
    for (const auto& entry : runtime::kKinds) names.push_back(entry.first);
    return names;
  });
  m.def("detected_isa", [] { return runtime::isa_name(runtime::detected_isa()); });
  m.def("active_isa", [] { return runtime::isa_name(runtime::active_isa()); });
#ifdef LMA_SOURCE_SHA256
  m.attr("source_sha256") = LMA_SOURCE_SHA256;
#endif
}
