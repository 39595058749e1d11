/*
 * cpp_inline.cpp - a C++ program built like a distro binary (-O2, no frame
 * pointers) whose leak path runs through inlined frames, for the language
 * tests (tests/languages.rs).
 *
 * Build (done by tests/support/languages.rs):
 *   g++ -O2 -g -fomit-frame-pointer
 *
 * Protocol: stdout "ready <pid>", then on stdin "go" perform every
 * allocation, print "done", and stay until stdin closes.
 *
 * store::Shelf::stock (noinline) calls Shelf::restock, an inline member
 * function, which calls the function template make_crate<Crate<N>>, both
 * forced inline: the return address in `stock` stands for three source
 * functions, and `new` (libstdc++'s operator new, which calls malloc) is
 * above them. The report must show operator new, make_crate, restock,
 * stock, fill, main, the two inlined ones marked so and each with the line
 * of its own call (the LINE: markers).
 *
 * KEEP IN SYNC with CPP_CHAIN in tests/languages.rs.
 */
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <unistd.h>

#define ALWAYS_INLINE inline __attribute__((always_inline))
#define NOINLINE __attribute__((noinline, noclone))

volatile int one = 1;

namespace store {

template <unsigned Size> struct Crate {
    char bytes[Size];
    explicit Crate(int tag) { std::memset(bytes, tag, sizeof bytes); }
};

template <typename T> ALWAYS_INLINE T *make_crate(int tag)
{
    return new T(tag * one); /* LINE:new */
}

class Shelf {
  public:
    NOINLINE long stock(int tag);

  private:
    ALWAYS_INLINE Crate<1536> *restock(int tag)
    {
        return make_crate<Crate<1536>>(tag + 1); /* LINE:make_crate */
    }
    Crate<1536> *slots_[16] = {};
    int used_ = 0;
};

long Shelf::stock(int tag)
{
    Crate<1536> *crate = restock(tag); /* LINE:restock */
    slots_[used_++ % 16] = crate;
    return crate->bytes[0] + used_;
}

} // namespace store

store::Shelf *volatile shelf;

NOINLINE long fill(int n)
{
    long total = 0;
    for (int i = 0; i < n; i++)
        total += shelf->stock(i); /* LINE:stock */
    return total * 3;
}

int main()
{
    char line[64];
    shelf = new store::Shelf();
    std::printf("ready %d\n", (int)getpid());
    std::fflush(stdout);
    if (std::fgets(line, sizeof line, stdin) == nullptr || std::strncmp(line, "go", 2) != 0)
        return 1;
    long total = fill(4); /* LINE:fill */
    std::printf("done\n");
    std::fflush(stdout);
    while (std::fgets(line, sizeof line, stdin) != nullptr)
        ;
    return total == 42 ? 3 : 0;
}
