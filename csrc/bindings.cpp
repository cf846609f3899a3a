// pybind11 face of the trajectory store. Memory crosses the boundary only through the buffer
// protocol (numpy arrays in, zero-copy numpy views out), so the extension never links libtorch.
// Every buffer argument is checked (dimensions, C-contiguity, element size and kind) before any copy,
// and long copies run with the GIL released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "advantages.hpp"
#include "arena.hpp"
#include "common.hpp"
#include "crc32.hpp"
#include "plan.hpp"

namespace py = pybind11;
using cxrl::TrajectoryArena;

namespace {

// kind: 'f' float, 'i' signed integer, '*' anything of the right element size (raw latent words)
py::buffer_info checked(const py::buffer& buf, const std::string& name, int64_t itemsize, char kind,
                        const std::vector<int64_t>& shape, bool writable, bool first_dim_at_least = false) {
  py::buffer_info info = buf.request(writable);
  if (info.itemsize != itemsize)
    throw std::invalid_argument(name + ": element size " + std::to_string(info.itemsize) + " bytes, expected " + std::to_string(itemsize));
  std::string fmt = info.format;
  while (!fmt.empty() && (fmt[0] == '<' || fmt[0] == '=' || fmt[0] == '@')) fmt.erase(0, 1);
  const char c = fmt.empty() ? '?' : fmt.back();
  if (kind == 'f' && c != 'f' && c != 'd') throw std::invalid_argument(name + ": expected floating-point data, got format '" + info.format + "'");
  if (kind == 'i' && std::string("bhilq").find(c) == std::string::npos)
    throw std::invalid_argument(name + ": expected signed integer data, got format '" + info.format + "'");
  if (info.ndim != static_cast<py::ssize_t>(shape.size()))
    throw std::invalid_argument(name + ": expected " + std::to_string(shape.size()) + " dimensions, got " + std::to_string(info.ndim));
  py::ssize_t expect_stride = itemsize;
  for (py::ssize_t d = info.ndim - 1; d >= 0; --d) {
    const bool ok = (d == 0 && first_dim_at_least) ? info.shape[0] >= shape[0] : info.shape[d] == shape[d];
    if (!ok)
      throw std::invalid_argument(name + ": dimension " + std::to_string(d) + " is " + std::to_string(info.shape[d]) +
                                  (d == 0 && first_dim_at_least ? ", needs at least " : ", expected ") + std::to_string(shape[d]));
    if (info.shape[d] > 1 && info.strides[d] != expect_stride) throw std::invalid_argument(name + ": must be C-contiguous");
    expect_stride *= info.shape[d];
  }
  return info;
}

std::vector<int64_t> with_rows(int64_t rows, const std::vector<int64_t>& tail) {
  std::vector<int64_t> s{rows};
  s.insert(s.end(), tail.begin(), tail.end());
  return s;
}

py::dtype raw_word(int64_t itemsize) {
  switch (itemsize) {
    case 2: return py::dtype::of<uint16_t>();
    case 4: return py::dtype::of<uint32_t>();
    default: return py::dtype::of<uint64_t>();
  }
}

// Zero-copy numpy view of one arena section; `owner` keeps the arena alive while the view exists.
py::array section_view(py::object owner, const std::string& name) {
  auto& a = owner.cast<TrajectoryArena&>();
  const int64_t n = a.num_samples(), t = a.num_steps();
  if (name == "latents") {
    std::vector<int64_t> shape{n, t + 1};
    shape.insert(shape.end(), a.latent_shape().begin(), a.latent_shape().end());
    return py::array(raw_word(a.itemsize()), shape, a.latents(), owner);
  }
  if (name == "log_probs") return py::array(py::dtype::of<float>(), std::vector<int64_t>{n, t}, a.log_probs(), owner);
  if (name == "timesteps") return py::array(py::dtype::of<int64_t>(), std::vector<int64_t>{n, t}, a.timesteps(), owner);
  if (name == "prompt_ids") return py::array(py::dtype::of<int64_t>(), std::vector<int64_t>{n}, a.prompt_ids(), owner);
  if (name == "rewards") return py::array(py::dtype::of<float>(), std::vector<int64_t>{n, a.num_rewards()}, a.rewards(), owner);
  if (name == "advantages") return py::array(py::dtype::of<float>(), std::vector<int64_t>{n}, a.advantages(), owner);
  throw std::invalid_argument("unknown arena section '" + name + "'");
}

template <typename T>
py::array_t<T> to_numpy(const std::vector<T>& v) {
  py::array_t<T> out(static_cast<py::ssize_t>(v.size()));
  if (!v.empty()) std::memcpy(out.mutable_data(), v.data(), v.size() * sizeof(T));
  return out;
}

template <typename T>
std::vector<T> from_buffer(const py::buffer& b, const std::string& name, char kind) {
  py::buffer_info info = b.request();
  if (info.ndim != 1) throw std::invalid_argument(name + ": expected a 1-D array");
  checked(b, name, sizeof(T), kind, {static_cast<int64_t>(info.shape[0])}, false);
  const T* p = static_cast<const T*>(info.ptr);
  return std::vector<T>(p, p + info.shape[0]);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "cxrl trajectory store: contiguous arena, minibatch plans, threaded gathers, advantages, save/load";
  m.attr("__version__") = "0.1.0";
  py::register_exception<cxrl::FormatError>(m, "TrajectoryFormatError", PyExc_ValueError);

  m.def("crc32", [](py::buffer b, uint32_t crc) {
        py::buffer_info info = b.request();
        return cxrl::crc32_update(crc, info.ptr, static_cast<size_t>(info.size * info.itemsize));
      }, py::arg("data"), py::arg("crc") = 0, "CRC-32 (same value as zlib.crc32) of a contiguous buffer");

  m.def("build_plan", [](int64_t n, int64_t t, int64_t bs, int64_t trained, uint64_t seed) {
        cxrl::Plan p;
        {
          py::gil_scoped_release nogil;
          p = cxrl::build_plan(n, t, bs, trained, seed);
        }
        return py::make_tuple(to_numpy(p.sample_idx), to_numpy(p.step_idx), to_numpy(p.offsets));
      }, py::arg("num_samples"), py::arg("num_steps"), py::arg("batch_size"), py::arg("trained_steps"), py::arg("seed"),
      "-> (sample_idx, step_idx, offsets) int64 arrays; see csrc/plan.hpp");

  py::class_<TrajectoryArena>(m, "TrajectoryArena")
      .def(py::init<int64_t, int64_t, std::vector<int64_t>, int64_t, uint32_t>(), py::arg("num_samples"),
           py::arg("num_steps"), py::arg("latent_shape"), py::arg("num_rewards"), py::arg("dtype_code"))
      .def_property_readonly("num_samples", &TrajectoryArena::num_samples)
      .def_property_readonly("num_steps", &TrajectoryArena::num_steps)
      .def_property_readonly("num_rewards", &TrajectoryArena::num_rewards)
      .def_property_readonly("dtype_code", &TrajectoryArena::dtype_code)
      .def_property_readonly("itemsize", &TrajectoryArena::itemsize)
      .def_property_readonly("latent_shape", &TrajectoryArena::latent_shape)
      .def_property_readonly("nbytes", &TrajectoryArena::nbytes)
      .def_property_readonly("data_ptr", [](const TrajectoryArena& a) { return reinterpret_cast<uintptr_t>(a.base()); })
      .def("section", [](py::object self, const std::string& name) { return section_view(self, name); }, py::arg("name"))
      .def("write_latents", [](TrajectoryArena& a, int64_t start, int64_t slot, py::buffer src, int threads) {
            auto info = checked(src, "latents", a.itemsize(), '*', with_rows(src.request().ndim ? src.request().shape[0] : 0, a.latent_shape()), false);
            py::gil_scoped_release nogil;
            a.write_latents(start, info.shape[0], slot, static_cast<const unsigned char*>(info.ptr), threads);
          }, py::arg("start"), py::arg("slot"), py::arg("src"), py::arg("threads") = 1)
      .def("write_step_scalars", [](TrajectoryArena& a, int64_t start, int64_t step, py::buffer lp, py::buffer ts) {
            auto l = checked(lp, "log_prob", 4, 'f', {static_cast<int64_t>(lp.request().size)}, false);
            auto t = checked(ts, "timestep", 8, 'i', {l.shape[0]}, false);
            a.write_step_scalars(start, l.shape[0], step, static_cast<const float*>(l.ptr), static_cast<const int64_t*>(t.ptr));
          }, py::arg("start"), py::arg("step"), py::arg("log_prob"), py::arg("timestep"))
      .def("write_prompt_ids", [](TrajectoryArena& a, int64_t start, py::buffer ids) {
            auto i = checked(ids, "prompt_ids", 8, 'i', {static_cast<int64_t>(ids.request().size)}, false);
            a.write_prompt_ids(start, i.shape[0], static_cast<const int64_t*>(i.ptr));
          }, py::arg("start"), py::arg("ids"))
      .def("write_rewards", [](TrajectoryArena& a, int64_t start, py::buffer r) {
            auto info = checked(r, "rewards", 4, 'f', {static_cast<int64_t>(r.request().size / a.num_rewards()), a.num_rewards()}, false);
            a.write_rewards(start, info.shape[0], static_cast<const float*>(info.ptr));
          }, py::arg("start"), py::arg("rewards"))
      .def("write_advantages", [](TrajectoryArena& a, int64_t start, py::buffer adv) {
            auto info = checked(adv, "advantages", 4, 'f', {static_cast<int64_t>(adv.request().size)}, false);
            a.write_advantages(start, info.shape[0], static_cast<const float*>(info.ptr));
          }, py::arg("start"), py::arg("advantages"))
      .def("gather", [](const TrajectoryArena& a, py::buffer samples, py::buffer steps, int64_t begin, int64_t end,
                        py::buffer x_t, py::buffer x_prev, py::buffer t_out, py::buffer logp_out, py::buffer adv_out,
                        py::buffer pid_out, int threads) {
            auto s = checked(samples, "sample_idx", 8, 'i', {static_cast<int64_t>(samples.request().size)}, false);
            auto j = checked(steps, "step_idx", 8, 'i', {s.shape[0]}, false);
            if (begin < 0 || end < begin || end > s.shape[0])
              throw std::out_of_range("gather range [" + std::to_string(begin) + ", " + std::to_string(end) +
                                      ") is outside the plan's " + std::to_string(s.shape[0]) + " entries");
            const int64_t count = end - begin;
            auto xt = checked(x_t, "x_t staging", a.itemsize(), '*', with_rows(count, a.latent_shape()), true, true);
            auto xp = checked(x_prev, "x_prev staging", a.itemsize(), '*', with_rows(count, a.latent_shape()), true, true);
            auto to = checked(t_out, "timesteps staging", 8, 'i', {count}, true, true);
            auto lo = checked(logp_out, "log_probs staging", 4, 'f', {count}, true, true);
            auto ao = checked(adv_out, "advantages staging", 4, 'f', {count}, true, true);
            auto po = checked(pid_out, "prompt_ids staging", 8, 'i', {count}, true, true);
            const int64_t* sp = static_cast<const int64_t*>(s.ptr) + begin;
            const int64_t* jp = static_cast<const int64_t*>(j.ptr) + begin;
            a.check_indices(sp, jp, count);
            py::gil_scoped_release nogil;
            a.gather(sp, jp, count, static_cast<unsigned char*>(xt.ptr), static_cast<unsigned char*>(xp.ptr),
                     static_cast<int64_t*>(to.ptr), static_cast<float*>(lo.ptr), static_cast<float*>(ao.ptr),
                     static_cast<int64_t*>(po.ptr), threads);
          }, py::arg("sample_idx"), py::arg("step_idx"), py::arg("begin"), py::arg("end"), py::arg("x_t"),
          py::arg("x_prev"), py::arg("timesteps"), py::arg("log_probs"), py::arg("advantages"), py::arg("prompt_ids"),
          py::arg("threads") = 1)
      .def("save", [](const TrajectoryArena& a, const std::string& path) {
            py::gil_scoped_release nogil;
            a.save(path);
          }, py::arg("path"))
      .def_static("load", [](const std::string& path) {
            std::unique_ptr<TrajectoryArena> out;
            {
              py::gil_scoped_release nogil;
              out = TrajectoryArena::load(path);
            }
            return out;
          }, py::arg("path"));

  py::class_<cxrl::AdvantageStats>(m, "AdvantageStats")
      .def(py::init<int, int64_t, int64_t, int64_t, double, double>(), py::arg("mode"), py::arg("window"),
           py::arg("min_count"), py::arg("group_size"), py::arg("clip"), py::arg("eps"))
      .def("compute", [](cxrl::AdvantageStats& st, py::buffer keys, py::buffer rewards) {
            auto k = from_buffer<int64_t>(keys, "prompt keys", 'i');
            auto r = from_buffer<double>(rewards, "rewards", 'f');
            if (k.size() != r.size())
              throw std::invalid_argument("advantages: " + std::to_string(k.size()) + " prompt keys for " + std::to_string(r.size()) + " rewards");
            return to_numpy(st.compute(k.data(), r.data(), static_cast<int64_t>(k.size())));
          }, py::arg("keys"), py::arg("rewards"))
      .def("export_state", [](const cxrl::AdvantageStats& st) {
            std::vector<int64_t> keys, counts;
            std::vector<double> values;
            st.export_state(keys, counts, values);
            return py::make_tuple(to_numpy(keys), to_numpy(counts), to_numpy(values));
          })
      .def("import_state", [](cxrl::AdvantageStats& st, py::buffer keys, py::buffer counts, py::buffer values) {
            st.import_state(from_buffer<int64_t>(keys, "state keys", 'i'), from_buffer<int64_t>(counts, "state counts", 'i'),
                            from_buffer<double>(values, "state values", 'f'));
          }, py::arg("keys"), py::arg("counts"), py::arg("values"))
      .def("clear", &cxrl::AdvantageStats::clear)
      .def_property_readonly("num_keys", &cxrl::AdvantageStats::num_keys);
}
