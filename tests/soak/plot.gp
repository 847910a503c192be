# Plots the soak's CSV (agent/tests/soak): gnuplot -e "csv='soak.csv'; png='soak.png'; title='...'" plot.gp
set datafile separator ","
set terminal pngcairo size 1400,1000 font "DejaVu Sans,10"
set output png
set multiplot layout 2,2 title title
set xlabel "minutes"
set key top left
set grid
set yrange [0:*]
m(t) = t / 60.0
set title "RSS (MiB)"
plot csv every ::1 using (m($1)):($3/1024.0) with linespoints pt 7 ps 0.4 title "agent", \
     csv every ::1 using (m($1)):($8/1024.0) with linespoints pt 7 ps 0.4 title "data hub"
set title "open file descriptors"
plot csv every ::1 using (m($1)):4 with linespoints pt 7 ps 0.4 title "agent", \
     csv every ::1 using (m($1)):9 with linespoints pt 7 ps 0.4 title "data hub"
set title "threads"
plot csv every ::1 using (m($1)):5 with linespoints pt 7 ps 0.4 title "agent", \
     csv every ::1 using (m($1)):10 with linespoints pt 7 ps 0.4 title "data hub"
set title "mounts (agent's namespace) and cgroups (under its parent)"
plot csv every ::1 using (m($1)):6 with linespoints pt 7 ps 0.4 title "mounts", \
     csv every ::1 using (m($1)):7 with linespoints pt 7 ps 0.4 title "cgroups"
unset multiplot
