// A CUDA execution model on the CPU, for testing lstmx's kernels on a machine without a GPU.
//
// tests/cuda_emulator.py compiles a kernel source (the same string NVRTC compiles) with g++ after this header.
// Every CUDA thread of a launch is a fiber (ucontext) on one host thread: a fiber runs until it reaches a
// barrier (__syncthreads, a grid sync, a warp shuffle) or returns, and a barrier opens once every live thread
// it spans has reached it. Which thread runs next is drawn from the launch's seed, so a kernel that reads
// what another thread (or block) writes without a barrier in between gives wrong or seed-dependent results.
// Threads that wait at different barriers of one block (or grid) are reported as a divergent barrier instead
// of hanging.
//
// Vector loads and stores must be aligned as on a GPU: the kernels are built with -fsanitize=alignment and the
// handler below stands in for the sanitizer's runtime, so an access through a misaligned float4*, double2* or
// float2* (or any type) becomes the launch's error, where a GPU would stop the kernel ("misaligned address").
//
// What it does not model: memory ordering and caches (every load sees the latest store), warp-synchronous
// execution outside shuffles, occupancy limits, and the numerics of the GPU's math functions.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <tuple>
#include <utility>
#include <vector>
#include <ucontext.h>

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
struct uint3 {
    unsigned x = 0, y = 0, z = 0;
};

struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(16) double2 {
    double x, y;
};
struct alignas(8) float2 {
    float x, y;
};
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }

// What the running fiber sees; the scheduler sets them before it resumes a fiber.
inline uint3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __align__(n) alignas(n)
#define __launch_bounds__(...)

namespace emu {

enum class Wait { none, block, grid, warp, done };

struct Fiber {
    ucontext_t context;
    std::unique_ptr<char[]> stack;  // left uninitialised: zeroing 256 KB per thread costs more than the run
    uint3 thread, block;
    int block_index = 0, warp_index = 0;
    Wait wait = Wait::none;
};

struct Launch {
    std::vector<Fiber> fibers;
    std::vector<std::vector<unsigned char>> shared;  // per block
    ucontext_t scheduler;
    Fiber* running = nullptr;
    std::string error;
    std::string fault;  // the first misaligned access or grid barrier outside a cooperative launch, if any
    bool cooperative = false;  // launched as cuLaunchCooperativeKernel does: grid barriers are allowed
    // a value each lane puts down for a warp shuffle: (warp, lane) -> 8 bytes
    std::vector<unsigned long long> exchange;
};

inline Launch* current = nullptr;

// What -fsanitize=alignment hands its handler (the layout of the sanitizer runtime's TypeMismatchData).
struct SourceLocation {
    const char* file;
    unsigned line, column;
};
struct TypeMismatchData {
    SourceLocation location;
    const void* type;
    unsigned char log_alignment;
    unsigned char kind;
};

inline void wait_at(Wait barrier)
{
    Fiber* self = current->running;
    self->wait = barrier;
    swapcontext(&self->context, &current->scheduler);
}

inline unsigned char* shared_memory() { return current->shared[current->running->block_index].data(); }

// What a GPU would stop the kernel for: the first one is the launch's error, and the thread stops there (it counts
// as finished, so the others run on).
inline void fault(const char* what)
{
    if (current->fault.empty()) current->fault = what;
    wait_at(Wait::done);  // never resumed
}

inline void body_trampoline(unsigned low, unsigned high);

}  // namespace emu

// The sanitizer's check failed: an access through a pointer that is not a multiple of its type's alignment.
// The first one is the launch's error, and the thread stops there, as on a GPU (on the CPU an aligned vector
// instruction would fault on it too): it counts as finished, so the others run on.
extern "C" void __ubsan_handle_type_mismatch_v1(emu::TypeMismatchData* data, unsigned long long pointer)
{
    if (emu::current == nullptr || emu::current->running == nullptr) return;
    char text[200];
    std::snprintf(text, sizeof text, "misaligned address: an access that needs %u-byte alignment at 0x%llx (%s:%u)",
                  1u << data->log_alignment, pointer, data->location.file, data->location.line);
    emu::fault(text);
}

inline void __syncthreads() { emu::wait_at(emu::Wait::block); }
inline void __threadfence() {}
inline void __threadfence_block() {}
template <typename T> inline T __ldcg(const T* p) { return *p; }
template <typename T> inline T __ldg(const T* p) { return *p; }

// Warp shuffles: every lane of the warp puts its value down, waits for the others, reads its partner's, and
// waits again so no lane overwrites a value before it is read. The mask is not modelled: all 32 lanes take part.
template <typename T> inline T emu_shuffle(T value, int source_lane)
{
    static_assert(sizeof(T) <= 8, "shuffles move at most 8 bytes");
    emu::Fiber* self = emu::current->running;
    const unsigned tid = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    const size_t base = (size_t)self->warp_index * 32;
    unsigned long long bits = 0;
    std::memcpy(&bits, &value, sizeof(T));
    emu::current->exchange[base + tid % 32] = bits;
    emu::wait_at(emu::Wait::warp);
    T result;
    std::memcpy(&result, &emu::current->exchange[base + ((unsigned)source_lane & 31u)], sizeof(T));
    emu::wait_at(emu::Wait::warp);
    return result;
}
template <typename T> inline T __shfl_sync(unsigned, T value, int lane, int = 32) { return emu_shuffle(value, lane); }
template <typename T> inline T __shfl_xor_sync(unsigned, T value, int mask, int = 32)
{
    const unsigned tid = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    return emu_shuffle(value, (int)((tid % 32) ^ (unsigned)mask));
}
template <typename T> inline T __shfl_down_sync(unsigned, T value, unsigned delta, int = 32)
{
    const unsigned lane = (threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)) % 32;
    return emu_shuffle(value, (int)(lane + delta < 32 ? lane + delta : lane));
}

// The two PTX instructions of the kernels' TF32 variant. cvt.rna.tf32.f32: float32 rounded to a 10-bit
// mantissa, to nearest with ties away from zero (Inf and NaN pass). mma.sync.aligned.m16n8k8.row.col.f32.tf32:
// a warp-wide d += a b in the PTX fragment layout (lane l, g = l / 4, t = l % 4 holds a = A[g][t], A[g+8][t],
// A[g][t+4], A[g+8][t+4]; b = B[t][g], B[t+4][g]; d = D[g][2t], D[g][2t+1], D[g+8][2t], D[g+8][2t+1]), built from
// shuffles, so every lane must reach it, as on the GPU. Products and sums in float32 (the order differs from
// the tensor core's).
inline unsigned __float_as_uint(const float x)
{
    unsigned bits;
    std::memcpy(&bits, &x, 4);
    return bits;
}
inline float __uint_as_float(const unsigned bits)
{
    float x;
    std::memcpy(&x, &bits, 4);
    return x;
}

inline float tf32_round(const float x)
{
    unsigned bits;
    std::memcpy(&bits, &x, 4);
    if ((bits & 0x7f800000u) != 0x7f800000u) bits = (bits + 0x1000u) & ~0x1fffu;
    float rounded;
    std::memcpy(&rounded, &bits, 4);
    return rounded;
}

inline void mma_tf32_m16n8k8(float (&d)[4], const float (&a)[4], const float (&b)[2])
{
    const unsigned lane = (threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)) % 32;
    const int g = (int)(lane / 4), t = (int)(lane % 4);
    for (int k = 0; k < 8; ++k) {
        const int high = k / 4, column = k % 4;  // A[.][k] and B[k][.] sit in register high of lane ... + column
        const float a_top = emu_shuffle(a[2 * high], 4 * g + column), a_bottom = emu_shuffle(a[2 * high + 1], 4 * g + column);
        const float b_left = emu_shuffle(b[high], 4 * (2 * t) + column), b_right = emu_shuffle(b[high], 4 * (2 * t + 1) + column);
        d[0] += a_top * b_left;
        d[1] += a_top * b_right;
        d[2] += a_bottom * b_left;
        d[3] += a_bottom * b_right;
    }
}

template <typename T> inline T atomicAdd(T* address, T value)
{
    const T old = *address;
    *address = old + value;
    return old;
}

namespace cooperative_groups {
struct grid_group {
    void sync() const
    {
        if (!emu::current->cooperative) emu::fault("grid.sync() in a launch that is not cooperative");
        emu::wait_at(emu::Wait::grid);
    }
};
struct thread_block {
    void sync() const { emu::wait_at(emu::Wait::block); }
};
inline grid_group this_grid() { return {}; }
inline thread_block this_thread_block() { return {}; }
}  // namespace cooperative_groups

namespace emu {

inline std::vector<void*> launch_arguments;  // what the trampoline hands the kernel
inline void (*launch_body)() = nullptr;

inline void body_trampoline(unsigned, unsigned)
{
    launch_body();
    current->running->wait = Wait::done;
    // returning resumes uc_link: the scheduler
}

// The threads a barrier spans (a warp, a block or the grid): how many still run, how many wait at it.
struct Group {
    int live = 0, arrived = 0;
    std::vector<int> members;  // indices into Launch::fibers
};

constexpr size_t SHARED_GUARD = 4096;  // bytes of guard: a store past the end lands in it, not in the heap
constexpr unsigned char GUARD_BYTE = 0xa5;

// Runs body() once per thread of the grid; returns "" or what went wrong.
inline std::string run(dim3 grid, dim3 block, size_t shared_bytes, unsigned seed, bool cooperative, void (*body)())
{
    Launch launch;
    launch.cooperative = cooperative;
    const int threads_per_block = (int)(block.x * block.y * block.z);
    const int blocks = (int)(grid.x * grid.y * grid.z);
    const int warps_per_block = (threads_per_block + 31) / 32;
    // NaN bit patterns: a read before any write shows in the results; a guard of marked bytes past the end
    // shows a store beyond the dynamic shared memory the launch asked for
    launch.shared.assign(blocks, std::vector<unsigned char>(shared_bytes + SHARED_GUARD));
    for (auto& bytes : launch.shared) {
        std::memset(bytes.data(), 0xff, shared_bytes);
        std::memset(bytes.data() + shared_bytes, GUARD_BYTE, SHARED_GUARD);
    }
    launch.exchange.assign((size_t)blocks * warps_per_block * 32, 0);
    launch.fibers.resize((size_t)blocks * threads_per_block);
    const size_t stack_bytes = 256 * 1024;
    current = &launch;
    launch_body = body;
    blockDim = block;
    gridDim = grid;
    size_t index = 0;
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx) {
                const int block_index = (int)((bz * grid.y + by) * grid.x + bx);
                for (unsigned tz = 0; tz < block.z; ++tz)
                    for (unsigned ty = 0; ty < block.y; ++ty)
                        for (unsigned tx = 0; tx < block.x; ++tx) {
                            Fiber& f = launch.fibers[index++];
                            f.thread = {tx, ty, tz};
                            f.block = {bx, by, bz};
                            f.block_index = block_index;
                            const int tid = (int)(tx + block.x * (ty + block.y * tz));
                            f.warp_index = block_index * warps_per_block + tid / 32;
                            f.stack.reset(new char[stack_bytes]);
                            getcontext(&f.context);
                            f.context.uc_stack.ss_sp = f.stack.get();
                            f.context.uc_stack.ss_size = stack_bytes;
                            f.context.uc_link = &launch.scheduler;
                            makecontext(&f.context, (void (*)())body_trampoline, 2, 0u, 0u);
                        }
            }
    // Barriers open as soon as the last live thread they span arrives, and the next thread to run is drawn at
    // random from those that can: blocks drift apart between grid barriers as they may on a GPU, so a block
    // that reads what another block writes without a grid barrier in between sees the wrong values.
    std::vector<Group> warp_groups((size_t)blocks * warps_per_block), block_groups((size_t)blocks);
    Group grid_group;
    std::vector<int> runnable;
    for (int i = 0; i < (int)launch.fibers.size(); ++i) {
        const Fiber& f = launch.fibers[i];
        for (Group* g : {&warp_groups[f.warp_index], &block_groups[f.block_index], &grid_group}) {
            g->live += 1;
            g->members.push_back(i);
        }
        runnable.push_back(i);
    }
    auto release = [&](Group& g, Wait barrier) {
        for (int i : g.members)
            if (launch.fibers[i].wait == barrier) {
                launch.fibers[i].wait = Wait::none;
                runnable.push_back(i);
            }
        g.arrived = 0;
    };
    std::mt19937 random(seed);
    std::string error;
    while (!runnable.empty()) {
        const size_t pick = std::uniform_int_distribution<size_t>(0, runnable.size() - 1)(random);
        std::swap(runnable[pick], runnable.back());
        Fiber& f = launch.fibers[runnable.back()];
        runnable.pop_back();
        launch.running = &f;
        threadIdx = f.thread;
        blockIdx = f.block;
        swapcontext(&launch.scheduler, &f.context);
        const std::pair<Group*, Wait> groups[] = {{&warp_groups[f.warp_index], Wait::warp},
                                                  {&block_groups[f.block_index], Wait::block},
                                                  {&grid_group, Wait::grid}};
        for (const auto& [group, barrier] : groups) {
            if (f.wait == Wait::done) group->live -= 1;
            else if (f.wait == barrier) group->arrived += 1;
            else continue;
            if (group->arrived > 0 && group->arrived == group->live) release(*group, barrier);
        }
    }
    error = launch.fault;
    for (int b = 0; b < blocks && error.empty(); ++b)
        for (size_t i = shared_bytes; i < shared_bytes + SHARED_GUARD; ++i)
            if (launch.shared[b][i] != GUARD_BYTE) {
                error = "stored past the end of the dynamic shared memory (block " + std::to_string(b) + ", byte "
                        + std::to_string(i) + " of " + std::to_string(shared_bytes) + ")";
                break;
            }
    for (const Fiber& f : launch.fibers)
        if (f.wait != Wait::done) {
            char text[220];
            std::snprintf(text, sizeof text, "divergent barrier: thread (%u,%u,%u) of block (%u,%u,%u) waits at a "
                          "%s barrier that other live threads it spans never reach", f.thread.x, f.thread.y,
                          f.thread.z, f.block.x, f.block.y, f.block.z,
                          f.wait == Wait::block ? "block" : f.wait == Wait::grid ? "grid" : "warp");
            error = text;
            break;
        }
    current = nullptr;
    return error;
}

template <typename... Args, size_t... I>
inline void call_with(void (*kernel)(Args...), std::index_sequence<I...>)
{
    kernel(*static_cast<std::remove_reference_t<Args>*>(launch_arguments[I])...);
}

// Launches kernel as cuLaunchKernel would: args[i] points at the i-th argument's value.
template <typename... Args>
inline int launch_kernel(void (*kernel)(Args...), dim3 grid, dim3 block, size_t shared_bytes, void** args,
                         unsigned seed, int cooperative, char* error, int error_size)
{
    static void (*the_kernel)(Args...) = nullptr;
    the_kernel = kernel;
    launch_arguments.assign(args, args + sizeof...(Args));
    const std::string message = run(grid, block, shared_bytes, seed, cooperative != 0, [] {
        call_with(the_kernel, std::index_sequence_for<Args...>{});
    });
    std::snprintf(error, (size_t)error_size, "%s", message.c_str());
    return message.empty() ? 0 : 1;
}

}  // namespace emu
