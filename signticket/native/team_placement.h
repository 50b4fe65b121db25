// Team placement for the oneDNN convs (included by onednn_conv.cc, one translation unit).
//
// oneDNN (GNU OpenMP build) runs each conv on the calling thread's OpenMP team, and every XLA
// thread that calls a conv gets a team of its own. Unpinned, those workers sleep while XLA runs
// other ops, and on waking Linux stacked them on one CPU: a worker that had idled ran its first
// convnet steps ~11 ms slower (docs/performance.md, stops 35-37); torch's threads are pinned and
// did not. TeamPlacement pins each team's workers, member i to allowed CPU (first + i) % n, and
// the caller to `first` for the length of its call only (XLA's thread keeps its own mask
// between ops). Each new calling thread's team starts one CPU further on, so two teams running
// at once do not put their leaders on the same CPU.
//
// A pinned thread cannot move off a CPU another process holds: two convnet trainers at once ran
// 0.87x pinned capped at AVX2 (python -m bench.shared_cpus, stop 38). So by default placement
// follows the load: every quarter second at most, a call measures how much of the allowed CPUs'
// time other processes used since the last measurement (/proc/stat's busy ticks of those CPUs
// minus this process's CPU time); above kBusyShare the teams are unpinned, below kIdleShare
// pinned again (the gap keeps a load near one threshold from flipping them on every sample).
//
// SIGNTICKET_CONV_PLACE_TEAMS: unset or "auto" as above, "1" always pinned, "0" never. Nothing
// is pinned when the team is not one thread per allowed CPU (OMP_NUM_THREADS set otherwise).

#include <omp.h>
#include <pthread.h>
#include <sched.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

namespace placement {

enum class Mode { kOff, kAuto, kAlways };

inline Mode ModeFromEnv() {
  static const Mode mode = [] {
    const char* flag = std::getenv("SIGNTICKET_CONV_PLACE_TEAMS");
    if (flag == nullptr) return Mode::kAuto;
    std::string value(flag);
    return value == "0" ? Mode::kOff : value == "1" ? Mode::kAlways : Mode::kAuto;
  }();
  return mode;
}

// The CPUs this process may run on, as the first conv saw them.
inline const std::vector<int>& AllowedCpus() {
  static const std::vector<int> cpus = [] {
    std::vector<int> list;
    cpu_set_t mask;
    CPU_ZERO(&mask);
    if (sched_getaffinity(0, sizeof mask, &mask) == 0) {
      for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
        if (CPU_ISSET(cpu, &mask)) list.push_back(cpu);
      }
    }
    return list;
  }();
  return cpus;
}

inline bool SetMask(const std::vector<int>& cpus) {
  cpu_set_t mask;
  CPU_ZERO(&mask);
  for (int cpu : cpus) CPU_SET(cpu, &mask);
  return pthread_setaffinity_np(pthread_self(), sizeof mask, &mask) == 0;
}

inline bool PinToCpu(int cpu) { return SetMask({cpu}); }

// Whether teams may be pinned: not turned off, >= 2 CPUs, and a team is one thread per CPU.
inline bool Applies() {
  int n = static_cast<int>(AllowedCpus().size());
  return ModeFromEnv() != Mode::kOff && n >= 2 && omp_get_max_threads() == n;
}

// The line of `text` that starts with `label`, or nullptr.
inline const char* LineStarting(const char* text, const std::string& label) {
  for (const char* line = text; line != nullptr; line = std::strchr(line, '\n')) {
    if (*line == '\n') ++line;
    if (std::strncmp(line, label.c_str(), label.size()) == 0) return line;
  }
  return nullptr;
}

// Busy ticks (user, nice, system, irq, softirq) summed over the "cpuN" lines of a /proc/stat
// text for N in `cpus`; -1 when one of them has no line.
inline long long BusyTicks(const char* stat, const std::vector<int>& cpus) {
  long long total = 0;
  for (int cpu : cpus) {
    std::string label = "cpu" + std::to_string(cpu) + " ";
    const char* line = LineStarting(stat, label);
    if (line == nullptr) return -1;
    long long user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0;
    if (std::sscanf(line + label.size(), "%lld %lld %lld %lld %lld %lld %lld", &user, &nice,
                    &system, &idle, &iowait, &irq, &softirq) != 7) {
      return -1;
    }
    total += user + nice + system + irq + softirq;
  }
  return total;
}

// The share of `n` CPUs' time over `wall_s` that others used: their busy time less this
// process's CPU time `self_s`, in [0, 1].
inline double OthersShare(long long busy_ticks, double ticks_per_s, double self_s,
                          double wall_s, int n) {
  if (wall_s <= 0 || n <= 0 || ticks_per_s <= 0) return 0;
  double share = (busy_ticks / ticks_per_s - self_s) / (wall_s * n);
  return std::min(1.0, std::max(0.0, share));
}

constexpr double kSampleSeconds = 0.25;
constexpr double kBusyShare = 0.25;
constexpr double kIdleShare = 0.10;

inline double Seconds(clockid_t clock) {
  timespec t{};
  clock_gettime(clock, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

// /proc/stat, read whole ("" when it cannot be read).
inline std::string ProcStat() {
  std::string text;
  if (FILE* f = std::fopen("/proc/stat", "r")) {
    char chunk[4096];
    size_t got;
    while ((got = std::fread(chunk, 1, sizeof chunk, f)) > 0) text.append(chunk, got);
    std::fclose(f);
  }
  return text;
}

// One reading of the CPUs' busy ticks (-1: no /proc/stat line for one of them) and of this
// process's CPU clock and the wall clock.
struct Sample {
  long long busy_ticks = -1;
  double self_s = 0, wall_s = 0;
};

inline Sample TakeSample(const std::vector<int>& cpus) {
  return {BusyTicks(ProcStat().c_str(), cpus), Seconds(CLOCK_PROCESS_CPUTIME_ID),
          Seconds(CLOCK_MONOTONIC)};
}

// Others' share of the `n` CPUs between two samples of them (-1: either has no ticks).
inline double OthersShareBetween(const Sample& from, const Sample& to, int n) {
  if (from.busy_ticks < 0 || to.busy_ticks < 0) return -1;
  return OthersShare(to.busy_ticks - from.busy_ticks, static_cast<double>(sysconf(_SC_CLK_TCK)),
                     to.self_s - from.self_s, to.wall_s - from.wall_s, n);
}

// Whether other processes keep this process's CPUs busy (see the top of the file).
class Load {
 public:
  static Load& Get() {
    static Load load;
    return load;
  }

  bool OthersBusy() {
    double forced = forced_share_.load();
    if (forced >= 0) return Judge(forced);
    if (Seconds(CLOCK_MONOTONIC) < next_due_.load()) return busy_.load();
    std::unique_lock<std::mutex> lock(mutex_, std::try_to_lock);
    if (!lock.owns_lock()) return busy_.load();  // another thread is measuring
    const std::vector<int>& cpus = AllowedCpus();
    Sample sample = TakeSample(cpus);
    // The first sample, or none without /proc/stat: the verdict stays (pinned, as alone).
    double share = OthersShareBetween(last_, sample, static_cast<int>(cpus.size()));
    if (share >= 0) Judge(share);
    last_ = sample;
    next_due_.store(sample.wall_s + kSampleSeconds);
    return busy_.load();
  }

  // For tests: judge by `share` instead of measuring (negative: measure again).
  void Force(double share) { forced_share_.store(share); }

 private:
  bool Judge(double share) {
    if (share > kBusyShare) busy_.store(true);
    if (share < kIdleShare) busy_.store(false);
    return busy_.load();
  }

  std::mutex mutex_;
  std::atomic<double> forced_share_{-1.0};
  std::atomic<double> next_due_{0.0};  // wall clock of the next measurement
  std::atomic<bool> busy_{false};
  Sample last_;  // guarded by mutex_
};

// Pins the calling thread's OpenMP team for the lifetime of this object when placement applies
// and the CPUs are not shared (see the top of the file).
class TeamPlacement {
 public:
  TeamPlacement() {
    if (!Applies() || omp_in_parallel()) return;
    const std::vector<int>& cpus = AllowedCpus();
    int n = static_cast<int>(cpus.size());
    thread_local int first = -1;
    thread_local bool team_pinned = false;
    if (first < 0) {
      static std::atomic<int> teams{0};
      first = teams.fetch_add(1) % n;
    }
    bool pin = ModeFromEnv() == Mode::kAlways || !Load::Get().OthersBusy();
    if (pin != team_pinned) {
      // GNU OpenMP keeps this thread's workers for its later teams (same member, same thread),
      // so a change lasts until the next one. The caller is not pinned here, so nothing
      // inherits a one-CPU mask. (`start` is a copy: the workers would read their own, unset,
      // thread_local `first`.)
      int start = first;
#pragma omp parallel num_threads(n)
      {
        int member = omp_get_thread_num();
        if (member != 0 && pin) PinToCpu(cpus[(start + member) % n]);
        if (member != 0 && !pin) SetMask(cpus);
      }
      team_pinned = pin;
    }
    if (!pin || pthread_getaffinity_np(pthread_self(), sizeof saved_, &saved_) != 0) return;
    restore_ = PinToCpu(cpus[first]);
  }
  ~TeamPlacement() {
    if (restore_) pthread_setaffinity_np(pthread_self(), sizeof saved_, &saved_);
  }
  TeamPlacement(const TeamPlacement&) = delete;
  TeamPlacement& operator=(const TeamPlacement&) = delete;

 private:
  cpu_set_t saved_;
  bool restore_ = false;
};

}  // namespace placement
