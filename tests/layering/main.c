/* Linked against one component alone, every object of it pulled in: a
 * call from that component to a folder above it is an undefined symbol, so
 * the build itself fails. Running it proves nothing more; it exits 0. */
int main(void) { return 0; }
